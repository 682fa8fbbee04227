// The kface page: two photos -> POST /verify, one photo -> POST /analyze; the answer in words, the
// faces compared, and the distance drawn against the threshold and the model's distance densities.
"use strict";

const TEXT = {
  en: {
    title: "kface: are they the same person?",
    privacy: "Photos are processed in memory on this computer and never stored.",
    verifyHeading: "Compare two photos",
    photoA: "Photo A",
    photoB: "Photo B",
    onePhoto: "One photo",
    dropHint: "Drop a photo here or click to choose one",
    compare: "Compare",
    comparing: "Comparing…",
    analyzing: "Analyzing…",
    same: "Same person",
    different: "Different people",
    detailSame: "distance {d} ≤ threshold {t}",
    detailDifferent: "distance {d} > threshold {t}",
    chipsCaption: "The aligned faces the model compared.",
    severalFaces: "{photo}: {n} faces found, the largest was compared.",
    wholeImage: "{photo}: no face detected, the whole image was used.",
    estimatedAge: "age group {group}, expected age {age}",
    plotTitle: "The distance against the threshold and the model's distance distributions",
    legendSame: "same person (n={n})",
    legendDifferent: "different people (n={n})",
    sameSide: "same person",
    differentSide: "different people",
    thresholdLabel: "threshold {t}",
    thisPair: "this pair {d}",
    axis: "{metric} distance (smaller = more alike)",
    distNote: "Densities of {ns} same-person and {nd} different-person pairs from {source}; overlap {overlap}.",
    noDistribution: "This model has no stored distance distributions, so only the threshold is drawn. Start " +
      "the server with --distances results.csv (from kface verify --pairs with this model) to draw them.",
    analyzeHeading: "Age group and gender",
    noAttributes: "No attribute model is loaded: start the server with --attributes-model FILE (a model from " +
      "kface train-attributes).",
    ageGroup: "Age group",
    expectedAge: "Expected age",
    ageRange: "{coverage}% within {low}–{high} years",
    ageDomain: "Trained on Korean family-album photos (many scanned prints, toddlers to grandparents). On modern " +
      "portraits of adults it reads about {years} years too old: on such a photo, expect {low}–{high} years.",
    gender: "Gender",
    female: "female",
    male: "male",
    apiDocs: "JSON API (OpenAPI)",
    error: "Error: {m}",
    tooLarge: "{name} is {size}; the server takes at most {limit} per request.",
    model: "Model: {backbone}{trained}, threshold {t} ({source}).",
    trained: " (trained: {model})",
    explain: "The threshold is {t}: two faces at most that far apart are answered \"same person\". On families " +
      "the model never saw, this let through {far}% of pairs of different people and recognised {tar}% of " +
      "pairs of one person.",
    modelDetail: "How this threshold was chosen",
    cannotTell: "Cannot tell",
    cannotTellDetail: "The model is unsure at this distance (--abstain).",
    probability: "Probability that both photos show one person: {p}%.",
    caution: "Caution: a face looks under 13, or the two look far apart in age; on families the model never " +
      "saw, such pairs were answered right {accuracy}% of the time.",
    pointLabel: "{name}",
    language: "한국어",
  },
  ko: {
    title: "kface: 같은 사람일까요?",
    privacy: "사진은 이 컴퓨터의 메모리에서만 처리되며 저장되지 않습니다.",
    verifyHeading: "사진 두 장 비교",
    photoA: "사진 A",
    photoB: "사진 B",
    onePhoto: "사진 한 장",
    dropHint: "사진을 여기에 끌어다 놓거나 클릭해서 고르세요",
    compare: "비교",
    comparing: "비교하는 중…",
    analyzing: "분석하는 중…",
    same: "같은 사람",
    different: "다른 사람",
    detailSame: "거리 {d} ≤ 임계값 {t}",
    detailDifferent: "거리 {d} > 임계값 {t}",
    chipsCaption: "모델이 비교한 정렬된 얼굴입니다.",
    severalFaces: "{photo}: 얼굴 {n}개 중 가장 큰 얼굴을 비교했습니다.",
    wholeImage: "{photo}: 얼굴을 찾지 못해 사진 전체를 썼습니다.",
    estimatedAge: "연령대 {group}, 예상 나이 {age}세",
    plotTitle: "임계값과 모델의 거리 분포에 비춘 이 쌍의 거리",
    legendSame: "같은 사람 (n={n})",
    legendDifferent: "다른 사람 (n={n})",
    sameSide: "같은 사람",
    differentSide: "다른 사람",
    thresholdLabel: "임계값 {t}",
    thisPair: "이 쌍 {d}",
    axis: "{metric} 거리 (작을수록 닮음)",
    distNote: "{source}의 같은 사람 {ns}쌍, 다른 사람 {nd}쌍의 거리 밀도입니다. 겹침 면적 {overlap}.",
    noDistribution: "이 모델에는 저장된 거리 분포가 없어 임계값만 그립니다. 분포를 그리려면 --distances " +
      "results.csv (이 모델로 kface verify --pairs 를 실행해 얻은 파일)로 서버를 시작하세요.",
    analyzeHeading: "연령대와 성별",
    noAttributes: "속성 모델이 없습니다: --attributes-model FILE (kface train-attributes 로 만든 모델)로 " +
      "서버를 시작하세요.",
    ageGroup: "연령대",
    expectedAge: "예상 나이",
    ageRange: "{coverage}% 확률로 {low}–{high}세",
    ageDomain: "한국 가족 앨범 사진(스캔한 인화 사진이 많고, 아기부터 조부모까지)으로 학습한 모델입니다. 요즘의 성인 " +
      "인물 사진에서는 나이를 약 {years}세 많게 봅니다: 그런 사진이라면 {low}–{high}세로 보세요.",
    gender: "성별",
    female: "여성",
    male: "남성",
    apiDocs: "JSON API (OpenAPI)",
    error: "오류: {m}",
    tooLarge: "{name}의 크기가 {size}입니다. 서버는 요청 하나에 {limit}까지 받습니다.",
    model: "모델: {backbone}{trained}, 임계값 {t} ({source}).",
    trained: " (학습된 모델: {model})",
    explain: "임계값은 {t}입니다: 거리가 이 값 이하인 두 얼굴을 \"같은 사람\"으로 답합니다. 모델이 본 적 없는 " +
      "가족 사진에서 이 기준은 다른 사람 쌍의 {far}%를 통과시켰고, 같은 사람 쌍의 {tar}%를 알아봤습니다.",
    modelDetail: "이 임계값을 정한 방법",
    cannotTell: "판단할 수 없음",
    cannotTellDetail: "이 거리에서는 모델이 확신하지 못합니다 (--abstain).",
    probability: "두 사진이 같은 사람일 확률: {p}%.",
    caution: "주의: 13세 미만으로 보이는 얼굴이 있거나 두 얼굴의 나이 차가 커 보입니다. 모델이 본 적 없는 가족 " +
      "사진에서 이런 쌍의 정답률은 {accuracy}%였습니다.",
    pointLabel: "{name}",
    language: "English",
  },
};

const state = {
  language: pickLanguage(),
  health: null,
  distribution: null,
  files: { a: null, b: null, c: null },
  verify: null,
  analyze: null,
};

function pickLanguage() {
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked in TEXT) return asked;
  return (navigator.language || "en").toLowerCase().startsWith("ko") ? "ko" : "en";
}

function t(key, values = {}) {
  const text = TEXT[state.language][key] ?? TEXT.en[key];
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

const $ = (id) => document.getElementById(id);
const fixed = (value) => Number(value).toFixed(4);

// -- language ------------------------------------------------------------------------------------
function applyLanguage() {
  document.documentElement.lang = state.language;
  document.querySelectorAll("[data-i18n]").forEach((element) => {
    element.textContent = t(element.dataset.i18n);
  });
  $("language").textContent = t("language");
  renderModel();
  renderVerify();
  renderPlot();
  renderAnalyze();
}

// -- server information --------------------------------------------------------------------------
async function loadServerInfo() {
  const [health, distribution] = await Promise.all([
    fetch("/health").then((response) => response.json()),
    fetch("/distribution").then((response) => response.json()),
  ]);
  state.health = health;
  state.distribution = distribution;
  const noAttributes = !health.attributes;
  $("analyze-unavailable").hidden = !noAttributes;
  $("zone-c").classList.toggle("disabled", noAttributes);
  $("file-c").disabled = noAttributes;
  renderModel();
  renderPlot();
}

function percent(value, digits = 1) {
  return (100 * value).toFixed(digits);
}

function renderModel() {
  const health = state.health;
  if (!health) return;
  // One plain sentence where the card measured the threshold in use; the rule and data a click away.
  const expected = state.distribution && state.distribution.expected;
  $("model-detail").hidden = !expected;
  if (expected) {
    $("model").textContent = t("explain", {
      t: fixed(health.threshold), far: percent(expected.expected_far), tar: percent(expected.expected_tar),
    });
    $("model-source").textContent = t("model", {
      backbone: health.backbone, trained: "", t: fixed(health.threshold), source: health.threshold_source,
    });
    return;
  }
  $("model").textContent = t("model", {
    backbone: health.backbone,
    trained: health.trained ? t("trained", { model: health.model }) : "",
    t: fixed(health.threshold),
    source: health.threshold_source,
  });
}

// -- files in, JSON out ----------------------------------------------------------------------------
function setupZone(key) {
  const zone = $(`zone-${key}`);
  const input = $(`file-${key}`);
  input.addEventListener("change", () => {
    if (input.files.length) setFile(key, input.files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (!input.disabled) zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (!input.disabled && event.dataTransfer.files.length) setFile(key, event.dataTransfer.files[0]);
  });
}

function setFile(key, file) {
  state.files[key] = file;
  const preview = $(`zone-${key}`).querySelector(".preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file); // the photo stays in the browser; only the upload leaves it
  preview.hidden = false;
  if (key === "c") {
    analyze();
    return;
  }
  $("compare").disabled = !(state.files.a && state.files.b);
  if (state.files.a && state.files.b) compare();
}

async function post(url, fields) {
  const limit = state.health ? state.health.limits.max_request_bytes : Infinity;
  const size = Object.values(fields).reduce((total, file) => total + file.size, 0);
  if (size > limit) {
    const name = Object.values(fields).map((file) => file.name).join(", ");
    throw new Error(t("tooLarge", { name, size: megabytes(size), limit: megabytes(limit) }));
  }
  const form = new FormData();
  for (const [name, file] of Object.entries(fields)) form.append(name, file, file.name);
  return postForm(url, form);
}

// POST a form and return its JSON answer; an error answer throws its one-line detail (gallery.js uses it too).
async function postForm(url, form) {
  const response = await fetch(url, { method: "POST", body: form });
  let body;
  try {
    body = await response.json();
  } catch {
    throw new Error(`${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function megabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

function showError(id, error) {
  const element = $(id);
  element.hidden = !error;
  element.textContent = error ? t("error", { m: error.message }) : "";
}

// -- verify ----------------------------------------------------------------------------------------
async function compare() {
  const { a, b } = state.files;
  if (!a || !b) return;
  $("compare").disabled = true;
  $("verify-status").textContent = t("comparing");
  showError("verify-error", null);
  state.verify = null;
  renderVerify();
  try {
    state.verify = await post("/verify?chips=true", { image_a: a, image_b: b });
  } catch (error) {
    showError("verify-error", error);
  } finally {
    $("verify-status").textContent = "";
    $("compare").disabled = false;
  }
  renderVerify();
  renderPlot();
}

function renderVerify() {
  const answer = state.verify;
  $("verify-result").hidden = !answer;
  if (!answer) return;
  const verdict = $("verdict");
  const unsure = answer.answer === "cannot tell";
  verdict.textContent = t(unsure ? "cannotTell" : answer.same ? "same" : "different");
  verdict.className = `verdict ${unsure ? "unsure" : answer.same ? "same" : "different"}`;
  const notes = [t(answer.same ? "detailSame" : "detailDifferent", { d: fixed(answer.distance), t: fixed(answer.threshold) })];
  if (unsure) notes.push(t("cannotTellDetail"));
  if (answer.probability !== null && answer.probability !== undefined) {
    notes.push(t("probability", { p: percent(answer.probability, 0) }));
  }
  if (answer.caution) notes.push(t("caution", { accuracy: percent(answer.caution.heldout_accuracy, 0) }));
  answer.faces.forEach((face, index) => {
    const photo = t(index === 0 ? "photoA" : "photoB");
    if (face.n_faces > 1) notes.push(t("severalFaces", { photo, n: face.n_faces }));
    if (!face.found) notes.push(t("wholeImage", { photo }));
    // The model's attribute heads read the same embedding (null where the model has none, e.g. stock dlib).
    const age = $(index === 0 ? "age-a" : "age-b");
    age.hidden = !face.age;
    age.textContent = face.age
      ? t("estimatedAge", { age: Math.round(face.age.expected_age), group: face.age.age_group }) : "";
  });
  $("verdict-detail").textContent = notes.join(" ");
  $("chip-a").src = answer.chips[0];
  $("chip-b").src = answer.chips[1];
}

// -- the plot --------------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
const SAME = "#1f77b4";
const DIFFERENT = "#d62728";
const PLOT = { width: 680, height: 250, left: 16, right: 16, top: 34, bottom: 44 };

function svg(parent, name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  parent.appendChild(element);
  return element;
}

function niceStep(span) {
  const raw = span / 6;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return power * (unit < 1.5 ? 1 : unit < 3.5 ? 2 : unit < 7.5 ? 5 : 10);
}

function renderPlot() {
  const plot = $("plot");
  plot.replaceChildren();
  const health = state.health;
  if (!health) return;
  const dist = state.distribution && state.distribution.available ? state.distribution : null;
  const threshold = health.threshold;
  const distance = state.verify ? state.verify.distance : null;
  let low = dist ? dist.x[0] : 0;
  let high = dist ? dist.x[dist.x.length - 1] : threshold * 2;
  for (const value of [threshold, distance]) {
    if (value === null) continue;
    low = Math.min(low, value - 0.05 * (high - low));
    high = Math.max(high, value + 0.05 * (high - low));
  }
  const { width, height, left, right, top, bottom } = PLOT;
  const x = (value) => left + ((value - low) / (high - low)) * (width - left - right);
  const base = height - bottom;
  const peak = dist ? Math.max(...dist.same, ...dist.different) * 1.05 : 1;
  const y = (value) => base - (value / peak) * (base - top);

  if (dist) {
    const area = (values) => `M${x(dist.x[0])},${base} ` +
      dist.x.map((value, i) => `L${x(value).toFixed(1)},${y(values[i]).toFixed(1)}`).join(" ") +
      ` L${x(dist.x[dist.x.length - 1])},${base} Z`;
    const overlap = dist.same.map((value, i) => Math.min(value, dist.different[i]));
    svg(plot, "path", { d: area(dist.same), fill: SAME, "fill-opacity": 0.22, stroke: SAME, "stroke-width": 2 });
    svg(plot, "path", { d: area(dist.different), fill: DIFFERENT, "fill-opacity": 0.22, stroke: DIFFERENT, "stroke-width": 2 });
    svg(plot, "path", { d: area(overlap), fill: "#7f3c8d", "fill-opacity": 0.45, stroke: "none" });
    legend(plot, width - right - 200, top + 4, [
      [SAME, t("legendSame", { n: dist.n_same })],
      [DIFFERENT, t("legendDifferent", { n: dist.n_diff })],
    ]);
    $("plot-note").textContent = [t("distNote", {
      ns: dist.n_same, nd: dist.n_diff, source: dist.source, overlap: Number(dist.overlap).toFixed(3),
    }), ...dist.notes].join(" ");
  } else {
    // No densities: the two sides of the threshold, so the distance still reads against it.
    svg(plot, "rect", { x: x(low), y: top, width: x(threshold) - x(low), height: base - top, fill: SAME, "fill-opacity": 0.12 });
    svg(plot, "rect", { x: x(threshold), y: top, width: x(high) - x(threshold), height: base - top, fill: DIFFERENT, "fill-opacity": 0.12 });
    svg(plot, "text", { x: x(low) + 6, y: base - 8 }, t("sameSide"));
    svg(plot, "text", { x: x(high) - 6, y: base - 8, "text-anchor": "end" }, t("differentSide"));
    $("plot-note").textContent = t("noDistribution");
  }

  // The x axis.
  svg(plot, "line", { x1: left, x2: width - right, y1: base, y2: base, stroke: "#555" });
  const step = niceStep(high - low);
  for (let tick = Math.ceil(low / step) * step; tick <= high + 1e-9; tick += step) {
    svg(plot, "line", { x1: x(tick), x2: x(tick), y1: base, y2: base + 5, stroke: "#555" });
    svg(plot, "text", { x: x(tick), y: base + 18, "text-anchor": "middle" }, Number(tick.toFixed(6)).toString());
  }
  svg(plot, "text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" },
    t("axis", { metric: health.distance_metric }));

  // The model's other operating points: thin lines, named, under the threshold in use.
  const points = (dist && dist.points) || {};
  Object.entries(points).forEach(([name, value], i) => {
    if (Math.abs(value - threshold) < 1e-9 || value < low || value > high) return;
    svg(plot, "line", { class: "operating-point", x1: x(value), x2: x(value), y1: top + 14 + 12 * i, y2: base,
      stroke: "#777", "stroke-width": 1, "stroke-dasharray": "2 3" });
    svg(plot, "text", { x: x(value) - 3, y: top + 12 + 12 * i, "text-anchor": "end", style: "fill: #555; font-size: 11px" },
      t("pointLabel", { name }));
  });

  // Threshold and this pair's distance, each labelled on the side away from the other.
  const pairLeft = distance !== null && distance < threshold;
  marker(plot, x(threshold), top, base, "#000", "6 4", t("thresholdLabel", { t: fixed(threshold) }),
    distance === null || pairLeft);
  if (distance !== null) {
    const colour = state.verify.same ? SAME : DIFFERENT;
    marker(plot, x(distance), top, base, colour, "", t("thisPair", { d: fixed(distance) }), !pairLeft);
  }
}

function marker(plot, position, top, base, colour, dash, label, labelRight) {
  svg(plot, "line", { x1: position, x2: position, y1: top - 6, y2: base, stroke: colour, "stroke-width": dash ? 1.5 : 3, "stroke-dasharray": dash });
  svg(plot, "text", { x: position + (labelRight ? 5 : -5), y: top - 10, "text-anchor": labelRight ? "start" : "end", style: `fill: ${colour}; font-weight: 600` }, label);
}

function legend(plot, left, top, entries) {
  entries.forEach(([colour, label], i) => {
    svg(plot, "rect", { x: left, y: top + i * 18, width: 14, height: 10, fill: colour, "fill-opacity": 0.5, stroke: colour });
    svg(plot, "text", { x: left + 20, y: top + i * 18 + 9 }, label);
  });
}

// -- analyze ---------------------------------------------------------------------------------------
async function analyze() {
  const file = state.files.c;
  if (!file) return;
  $("analyze-status").textContent = t("analyzing");
  showError("analyze-error", null);
  state.analyze = null;
  renderAnalyze();
  try {
    state.analyze = await post("/analyze?chips=true", { image: file });
  } catch (error) {
    showError("analyze-error", error);
  } finally {
    $("analyze-status").textContent = "";
  }
  renderAnalyze();
}

function renderAnalyze() {
  const answer = state.analyze;
  $("analyze-result").hidden = !answer;
  if (!answer) return;
  $("chip-c").src = answer.chips ? answer.chips[0] : "";
  // A model may have one head only: show what it answers.
  $("age-group").textContent = answer.age_group ?? "";
  $("gender").textContent = answer.gender
    ? `${t(answer.gender)} (p ${Number(answer.gender_prob).toFixed(2)})` : "";
  const interval = answer.age_interval;
  $("expected-age").textContent = answer.expected_age != null
    ? `${Math.round(answer.expected_age)}` + (interval
      ? ` (${t("ageRange", { low: Math.round(interval.low), high: Math.round(interval.high),
                             coverage: Math.round(interval.coverage * 100) })})` : "") : "";
  for (const [key, present] of [["age-group", answer.age_group != null], ["expected-age", answer.expected_age != null],
                                ["gender", answer.gender != null]]) {
    $(key).hidden = !present;
    $(`${key}-label`).hidden = !present;
  }
  // Where the age model was trained, and its interval widened by the drift measured on portraits (adults only).
  const wider = answer.age_interval_outside_albums;
  $("age-domain").hidden = !wider;
  $("age-domain").textContent = wider ? t("ageDomain", {
    years: Math.round(Math.max(0, interval.low - wider.low)), low: Math.round(wider.low), high: Math.round(wider.high),
  }) : "";
  const table = $("age-probs");
  table.replaceChildren();
  for (const [group, probability] of Object.entries(answer.age_probs || {})) {
    const row = table.insertRow();
    row.insertCell().textContent = group;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(probability * 120)}px`;
    row.insertCell().appendChild(bar);
    row.insertCell().textContent = probability.toFixed(2);
  }
}

// -- start -----------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  ["a", "b", "c"].forEach(setupZone);
  $("compare").addEventListener("click", compare);
  $("language").addEventListener("click", () => {
    state.language = state.language === "ko" ? "en" : "ko";
    applyLanguage();
  });
  applyLanguage();
  loadServerInfo().catch((error) => showError("verify-error", error));
});
