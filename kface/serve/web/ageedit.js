// The page's age-editing part: one photo -> POST /age-edit; the aligned face and the face at each of the
// 8 age groups, side by side with their labels. Uses post() and showError() from app.js.
"use strict";

// Each text as [English, Korean].
const AGE_TEXT = {
  heading: ["The face at every age", "모든 연령대의 얼굴"],
  about: ["The face, aligned, shown at each of the 8 age groups by kface's age editor.", "정렬된 얼굴을 kface 연령 편집기로 8개 연령대 각각의 모습으로 보여 줍니다."],
  photo: ["One photo", "사진 한 장"],
  drop: ["Drop a photo here or click to choose one", "사진을 여기에 놓거나 클릭해서 고르세요"],
  editing: ["Editing…", "편집 중…"],
  input: ["input", "입력"],
};

function at(key, values = {}) {
  const [english, korean] = AGE_TEXT[key];
  const text = document.documentElement.lang === "ko" ? korean ?? english : english;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

const ageEdit = { answer: null };

function renderAgeEdit() {
  document.querySelectorAll("[data-age-i18n]").forEach((element) => {
    element.textContent = at(element.dataset.ageI18n);
  });
  const box = document.getElementById("age-edit-result");
  const answer = ageEdit.answer;
  box.hidden = !answer;
  box.replaceChildren();
  if (!answer) return;
  const tiles = [{ label: at("input"), chip: answer.input }]
    .concat(answer.edits.map((edit) => ({ label: edit.class, chip: edit.chip })));
  for (const tile of tiles) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = tile.chip;
    image.alt = tile.label;
    const caption = document.createElement("figcaption");
    caption.textContent = tile.label;
    figure.append(image, caption);
    box.append(figure);
  }
}

async function editAges(file) {
  const status = document.getElementById("age-edit-status");
  status.textContent = at("editing");
  showError("age-edit-error", null);
  ageEdit.answer = null;
  try {
    ageEdit.answer = await post("/age-edit", { image: file });
  } catch (error) {
    showError("age-edit-error", error);
  } finally {
    status.textContent = "";
  }
  renderAgeEdit();
}

function setupAgeEdit() {
  const zone = document.getElementById("zone-age");
  const input = document.getElementById("file-age");
  const take = (file) => {
    const preview = zone.querySelector(".preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file); // the photo stays in the browser; only the upload leaves it
    preview.hidden = false;
    editAges(file);
  };
  input.addEventListener("change", () => {
    if (input.files.length) take(input.files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) take(event.dataTransfer.files[0]);
  });
  // app.js switches the language by setting <html lang>; follow it.
  new MutationObserver(renderAgeEdit).observe(document.documentElement, { attributes: true, attributeFilter: ["lang"] });
  renderAgeEdit();
}

document.addEventListener("DOMContentLoaded", setupAgeEdit);
