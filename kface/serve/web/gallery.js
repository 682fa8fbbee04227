// The page's gallery part: one photo -> POST /search (the best matches, their distances drawn on the
// model's same/different distributions beside the 1:1 and open-set thresholds); a name -> POST /enroll.
"use strict";

// Each text as [English, Korean].
const GALLERY_TEXT = {
  heading: ["Find a person in the gallery", "갤러리에서 사람 찾기"],
  none: ["No gallery is loaded: start the server with --gallery FILE (made by kface enroll).", "갤러리가 없습니다: --gallery FILE 로 서버를 시작하세요 (kface enroll 로 만듭니다)."],
  size: ["Gallery: {people} people, {images} photos (model {model}); open-set threshold {t}.", "갤러리: {people}명, 사진 {images}장 (모델 {model}); 오픈셋 임계값 {t}."],
  drop: ["Drop a photo here or click to choose one", "사진을 여기에 놓거나 클릭해서 고르세요"],
  photo: ["Photo to search", "찾을 사진"],
  searching: ["Searching…", "찾는 중…"],
  match: ["Found: {name}", "찾음: {name}"],
  noOne: ["No one in the gallery", "갤러리에 없는 사람"],
  matchDetail: ["distance {d} ≤ open-set threshold {t}", "거리 {d} ≤ 오픈셋 임계값 {t}"],
  noOneDetail: ["nearest: {name} at {d} > open-set threshold {t}", "가장 가까운 사람: {name}, 거리 {d} > 오픈셋 임계값 {t}"],
  rank: ["#", "#"],
  name: ["Person", "사람"],
  distance: ["Distance", "거리"],
  oneToOne: ["Same person at the 1:1 threshold?", "1:1 임계값에서 같은 사람?"],
  yes: ["yes", "예"],
  no: ["no", "아니오"],
  enrollLabel: ["Enroll this photo as", "이 사진을 등록할 이름"],
  enroll: ["Enroll", "등록"],
  enrolled: ["Enrolled {name} ({n} new).", "{name} 등록됨 (새 사진 {n}장)."],
  already: ["{name}: this photo was already enrolled.", "{name}: 이미 등록된 사진입니다."],
  plot: ["The matches' distances on the model's distance distributions", "모델의 거리 분포 위의 후보 거리"],
  threshold: ["1:1 threshold {t}", "1:1 임계값 {t}"],
  openSet: ["open-set {t}", "오픈셋 {t}"],
  noDistribution: ["No distance distributions for this model (start the server with --distances to draw them).", "이 모델의 거리 분포가 없습니다 (--distances 로 서버를 시작하면 그립니다)."],
  error: ["Error: {m}", "오류: {m}"],
};

const gallery = { health: null, distribution: null, file: null, answer: null, message: "" };

function gt(key, values = {}) {
  const [english, korean] = GALLERY_TEXT[key];
  const text = document.documentElement.lang === "ko" ? korean ?? english : english;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

const byId = (id) => document.getElementById(id);
const four = (value) => Number(value).toFixed(4);

function galleryRender() {
  document.querySelectorAll("[data-gallery-i18n]").forEach((element) => {
    element.textContent = gt(element.dataset.galleryI18n);
  });
  const info = gallery.health && gallery.health.gallery;
  byId("gallery-size").textContent = info ? gt("size", {
    people: info.identities, images: info.images, model: info.model, t: four(info.open_set_threshold),
  }) : gt("none");
  byId("zone-g").classList.toggle("disabled", !info);
  byId("file-g").disabled = !info;
  byId("enroll-button").disabled = !(info && gallery.file);
  byId("gallery-message").textContent = gallery.message;
  const answer = gallery.answer;
  byId("gallery-result").hidden = !answer;
  if (answer) {
    const best = answer.candidates[0];
    const verdict = byId("gallery-verdict");
    verdict.textContent = answer.match ? gt("match", { name: answer.match }) : gt("noOne");
    verdict.className = `verdict ${answer.match ? "same" : "different"}`;
    byId("gallery-detail").textContent = answer.match
      ? gt("matchDetail", { d: four(best.distance), t: four(answer.open_set_threshold) })
      : gt("noOneDetail", { name: best.identity, d: four(best.distance), t: four(answer.open_set_threshold) });
    const table = byId("gallery-candidates");
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    for (const key of ["rank", "name", "distance", "oneToOne"]) head.appendChild(document.createElement("th")).textContent = gt(key);
    answer.candidates.forEach((candidate, i) => {
      const row = table.insertRow();
      row.insertCell().textContent = String(i + 1);
      row.insertCell().textContent = candidate.identity;
      row.insertCell().textContent = four(candidate.distance);
      row.insertCell().textContent = candidate.same_at_threshold ? gt("yes") : gt("no");
    });
  }
  galleryPlot();
}

function node(parent, name, attributes, text) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  parent.appendChild(element);
  return element;
}

function galleryPlot() {
  const plot = byId("gallery-plot");
  plot.replaceChildren();
  const answer = gallery.answer;
  const dist = gallery.distribution && gallery.distribution.available ? gallery.distribution : null;
  byId("gallery-plot-note").textContent = dist ? "" : gt("noDistribution");
  if (!answer) return;
  const width = 680, height = 250, left = 20, right = 20, top = 16, bottom = 34;
  const marks = [answer.threshold, answer.open_set_threshold, ...answer.candidates.map((c) => c.distance)];
  let low = Math.min(dist ? dist.x[0] : Infinity, ...marks);
  let high = Math.max(dist ? dist.x[dist.x.length - 1] : -Infinity, ...marks);
  const pad = 0.05 * (high - low || 1);
  low -= pad;
  high += pad;
  const x = (value) => left + ((value - low) / (high - low)) * (width - left - right);
  const base = height - bottom;
  if (dist) {
    const peak = Math.max(...dist.same, ...dist.different) * 1.05;
    const y = (value) => base - (value / peak) * (base - top);
    const area = (values) => `M${x(dist.x[0])},${base} ` +
      dist.x.map((value, i) => `L${x(value).toFixed(1)},${y(values[i]).toFixed(1)}`).join(" ") +
      ` L${x(dist.x[dist.x.length - 1])},${base} Z`;
    node(plot, "path", { d: area(dist.same), fill: "#1f77b4", "fill-opacity": 0.2, stroke: "#1f77b4" });
    node(plot, "path", { d: area(dist.different), fill: "#d62728", "fill-opacity": 0.2, stroke: "#d62728" });
  }
  node(plot, "line", { x1: left, x2: width - right, y1: base, y2: base, stroke: "#555" });
  for (let i = 0; i <= 5; i += 1) {
    const value = low + (i * (high - low)) / 5;
    node(plot, "text", { x: x(value), y: base + 18, "text-anchor": "middle" }, value.toFixed(2));
  }
  const line = (value, colour, dash, label, row) => {
    node(plot, "line", { x1: x(value), x2: x(value), y1: top, y2: base, stroke: colour, "stroke-dasharray": dash, "stroke-width": 2 });
    node(plot, "text", { x: x(value) + 4, y: top + 12 + 14 * row }, label);
  };
  line(answer.threshold, "#000", "6 4", gt("threshold", { t: four(answer.threshold) }), 0);
  line(answer.open_set_threshold, "#7f3c8d", "2 3", gt("openSet", { t: four(answer.open_set_threshold) }), 1);
  answer.candidates.forEach((candidate, i) => {
    line(candidate.distance, i === 0 && answer.match ? "#1f77b4" : "#444", "", `${i + 1}. ${candidate.identity}`, 2 + i);
  });
}

async function gallerySearch() {
  const form = new FormData();
  form.append("image", gallery.file, gallery.file.name);
  gallery.message = gt("searching");
  galleryRender();
  try {
    gallery.answer = await postForm("/search?top=5", form);
    gallery.message = "";
  } catch (error) {
    gallery.answer = null;
    gallery.message = gt("error", { m: error.message });
  }
  galleryRender();
}

async function galleryEnroll() {
  const name = byId("enroll-name").value.trim();
  if (!name || !gallery.file) return;
  const form = new FormData();
  form.append("image", gallery.file, gallery.file.name);
  form.append("identity", name);
  try {
    const body = await postForm("/enroll", form);
    gallery.message = body.enrolled ? gt("enrolled", { name, n: body.enrolled }) : gt("already", { name });
    gallery.health = await fetch("/health").then((response) => response.json());
  } catch (error) {
    gallery.message = gt("error", { m: error.message });
  }
  galleryRender();
}

function galleryChoose(file) {
  if (!file) return;
  gallery.file = file;
  const preview = byId("zone-g").querySelector(".preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  gallerySearch();
}

document.addEventListener("DOMContentLoaded", () => {
  const zone = byId("zone-g");
  byId("file-g").addEventListener("change", (event) => galleryChoose(event.target.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (!byId("file-g").disabled) galleryChoose(event.dataTransfer.files[0]);
  });
  byId("enroll-button").addEventListener("click", galleryEnroll);
  // The page's language button changes <html lang>: follow it.
  new MutationObserver(galleryRender).observe(document.documentElement, { attributes: true, attributeFilter: ["lang"] });
  Promise.all([
    fetch("/health").then((response) => response.json()),
    fetch("/distribution").then((response) => response.json()),
  ]).then(([health, distribution]) => {
    gallery.health = health;
    gallery.distribution = distribution;
    galleryRender();
  }).catch((error) => {
    gallery.message = gt("error", { m: error.message });
    galleryRender();
  });
});
