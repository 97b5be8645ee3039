/* The draw-a-digit page: every ready model of this server reads the same digit.
 *
 * It speaks only the KServe v2 REST API of the server that served it (paths relative to the
 * page, so it also works behind a path prefix):
 *   POST v2/repository/index {"ready": true}  -> the ready models
 *   GET  v2/models/NAME/config                -> the model card (parameter "modelzoo.card")
 *   POST v2/models/NAME/infer                 -> probabilities for a [1, 1, 28, 28] FP32 input
 */
(function () {
  "use strict";

  const PEN_WIDTH = 18; // canvas pixels of 280: strokes about as thick as MNIST's
  // Chromium opens at most 6 HTTP/1.1 connections to one host: no more requests at once, so
  // that each measured latency is the request's own round trip, not a wait for a connection.
  const REQUESTS_AT_ONCE = 6;
  const TOP_K = 3;

  const pad = document.getElementById("pad");
  const seen = document.getElementById("seen");
  const clearButton = document.getElementById("clear");
  const pickButton = document.getElementById("pick");
  const fileInput = document.getElementById("file");
  const status = document.getElementById("status");
  const list = document.getElementById("models");
  const template = document.getElementById("model-template");
  const padContext = pad.getContext("2d", { willReadFrequently: true });

  const page = {
    models: [], // [{name, version, card, element}] sorted by test accuracy, best first
    lastInput: null, // the last Float32Array(784) sent, for a look from the console
    inputVersion: 0, // bumped on every change of the input
    holdsPicture: false, // the pad shows an opened picture, not a drawing
  };
  window.zooPage = page;

  // -- the REST API --

  async function api(path, body) {
    const init = body === undefined
      ? { method: "GET" }
      : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Error(`no answer from the server (${error.message})`);
    }
    const text = await response.text();
    let value = null;
    try {
      value = text ? JSON.parse(text) : null;
    } catch (error) {
      if (response.ok) throw new Error(`the server sent something other than JSON: ${text.slice(0, 80)}`);
    }
    if (!response.ok) {
      const message = value && typeof value.error === "string" ? value.error : text || response.statusText;
      throw new Error(`${response.status}: ${message}`);
    }
    return value;
  }

  function modelPath(name) {
    return `v2/models/${encodeURIComponent(name)}`;
  }

  function cardOf(config) {
    const text = config && config.parameters && config.parameters["modelzoo.card"]
      && config.parameters["modelzoo.card"].string_value;
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch (error) {
      return null;
    }
  }

  function testAccuracy(card) {
    const metric = card && card.metrics && card.metrics.test_accuracy;
    return metric && typeof metric.value === "number" ? metric.value : null;
  }

  async function loadModels() {
    status.textContent = "Finding the models…";
    let index;
    try {
      index = await api("v2/repository/index", { ready: true });
    } catch (error) {
      status.textContent = `Could not list the models: ${error.message}`;
      return;
    }
    const names = [...new Set(index.filter((m) => !m.state || m.state === "READY").map((m) => m.name))];
    const models = await Promise.all(names.map(async (name) => {
      try {
        const config = await api(`${modelPath(name)}/config`);
        return { name, card: cardOf(config.config || config), problem: null };
      } catch (error) {
        return { name, card: null, problem: `no configuration: ${error.message}` };
      }
    }));
    models.sort((a, b) => {
      const accuracyA = testAccuracy(a.card), accuracyB = testAccuracy(b.card);
      if (accuracyA !== accuracyB) return (accuracyB ?? -1) - (accuracyA ?? -1);
      return a.name < b.name ? -1 : 1;
    });
    list.replaceChildren(...models.map(renderModel));
    page.models = models;
    list.dataset.count = String(models.length);
    status.textContent = models.length
      ? `${models.length} models ready. Draw a digit, or open a picture of one.`
      : "This server has no ready model.";
  }

  // -- rendering --

  function percent(value, digits) {
    return `${(100 * value).toFixed(digits)}%`;
  }

  function renderModel(model) {
    const element = template.content.firstElementChild.cloneNode(true);
    model.element = element;
    element.dataset.model = model.name;
    element.querySelector(".name").textContent = model.name;
    const card = model.card;
    const facts = [];
    if (card) {
      if (card.family) facts.push(card.family);
      if (typeof card.params === "number") facts.push(`${card.params.toLocaleString("en-US")} parameters`);
      const accuracy = testAccuracy(card);
      facts.push(accuracy === null ? "test accuracy unknown" : `test accuracy ${percent(accuracy, 2)}`);
      element.querySelector(".description").textContent = card.description || "";
    } else {
      facts.push("no model card");
    }
    element.querySelector(".facts").textContent = facts.join(" · ");
    if (model.problem) showError(model, model.problem);
    return element;
  }

  function labelOf(model, index) {
    const labels = model.card && model.card.labels;
    return labels && labels[index] !== undefined ? String(labels[index]) : String(index);
  }

  function showAnswer(model, probabilities, milliseconds) {
    const element = model.element;
    const order = [...probabilities.keys()].sort((a, b) => probabilities[b] - probabilities[a]);
    const best = order[0];
    element.querySelector(".digit").textContent = labelOf(model, best);
    element.querySelector(".digit").setAttribute("aria-label", `reads ${labelOf(model, best)}`);
    element.dataset.prediction = labelOf(model, best);
    const rows = order.slice(0, TOP_K).map((index) => {
      const row = document.createElement("li");
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = labelOf(model, index);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = percent(Math.min(1, Math.max(0, probabilities[index])), 1);
      bar.append(fill);
      const value = document.createElement("span");
      value.className = "probability";
      value.textContent = percent(probabilities[index], 1);
      row.append(label, bar, value);
      return row;
    });
    element.querySelector(".top").replaceChildren(...rows);
    element.querySelector(".latency").textContent = `${milliseconds.toFixed(1)} ms`;
    element.querySelector(".error").hidden = true;
    element.dataset.state = "done";
  }

  function showError(model, message) {
    const element = model.element;
    element.querySelector(".digit").textContent = "!";
    element.querySelector(".digit").setAttribute("aria-label", "error");
    delete element.dataset.prediction;
    element.querySelector(".top").replaceChildren();
    element.querySelector(".latency").textContent = "";
    const error = element.querySelector(".error");
    error.textContent = message;
    error.hidden = false;
    element.dataset.state = "error";
  }

  function resetAnswers() {
    for (const model of page.models) {
      if (model.problem) continue;
      const element = model.element;
      element.querySelector(".digit").textContent = "–";
      element.querySelector(".digit").removeAttribute("aria-label");
      delete element.dataset.prediction;
      element.querySelector(".top").replaceChildren();
      element.querySelector(".latency").textContent = "";
      element.querySelector(".error").hidden = true;
      element.dataset.state = "idle";
    }
  }

  function showSeen(tensor) {
    const context = seen.getContext("2d");
    const image = context.createImageData(28, 28);
    tensor.forEach((value, i) => {
      const level = Math.round(value * 255);
      image.data.set([level, level, level, 255], i * 4);
    });
    context.putImageData(image, 0, 0);
  }

  // -- inference: every model reads the same input --

  async function inferOne(model, tensor) {
    const body = {
      inputs: [{ name: "images", shape: [1, 1, 28, 28], datatype: "FP32", data: Array.from(tensor) }],
      outputs: [{ name: "probabilities" }],
    };
    const start = performance.now();
    const reply = await api(`${modelPath(model.name)}/infer`, body);
    const milliseconds = performance.now() - start;
    const output = (reply.outputs || []).find((o) => o.name === "probabilities");
    if (!output || !Array.isArray(output.data) || output.data.length < 1) {
      throw new Error("the reply has no probabilities");
    }
    return { probabilities: output.data, milliseconds };
  }

  let running = false;
  let pending = null; // the newest input not yet sent, while a round is running

  /** Send `tensor` to every model; a newer input arriving meanwhile waits for this round,
   *  and only the newest waiting input is sent after it. */
  async function classify(tensor, version) {
    if (running) {
      pending = { tensor, version };
      return;
    }
    running = true;
    page.lastInput = tensor;
    list.dataset.state = "busy";
    showSeen(tensor);
    const models = page.models.filter((m) => !m.problem);
    for (const model of models) model.element.dataset.state = "busy";
    const queue = [...models];
    const started = performance.now();
    async function worker() {
      while (queue.length) {
        const model = queue.shift();
        try {
          const { probabilities, milliseconds } = await inferOne(model, tensor);
          if (version === page.inputVersion) showAnswer(model, probabilities, milliseconds);
        } catch (error) {
          if (version === page.inputVersion) showError(model, error.message);
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(REQUESTS_AT_ONCE, models.length) }, worker));
    running = false;
    if (pending) {
      const next = pending;
      pending = null;
      classify(next.tensor, next.version);
      return;
    }
    if (version !== page.inputVersion) return; // cleared meanwhile
    const failed = models.filter((m) => m.element.dataset.state === "error").length;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    status.textContent = `${models.length - failed} of ${models.length} models answered in ${seconds} s`
      + (failed ? `; ${failed} failed.` : ".");
    list.dataset.inputVersion = String(version);
    list.dataset.state = "done";
  }

  function inputChanged() {
    page.inputVersion += 1;
    pad.dataset.inputVersion = String(page.inputVersion);
    return page.inputVersion;
  }

  // -- the drawing pad --

  function clearPad() {
    padContext.fillStyle = "#000000";
    padContext.fillRect(0, 0, pad.width, pad.height);
    page.holdsPicture = false;
  }

  function padPoint(event) {
    const box = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * pad.width) / box.width,
      y: ((event.clientY - box.top) * pad.height) / box.height,
    };
  }

  let stroke = null; // {pointerId, last: {x, y}} while the pen is down

  function drawTo(point) {
    padContext.beginPath();
    padContext.moveTo(stroke.last.x, stroke.last.y);
    padContext.lineTo(point.x, point.y);
    padContext.stroke();
    stroke.last = point;
  }

  pad.addEventListener("pointerdown", (event) => {
    if (stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    if (page.holdsPicture) clearPad(); // drawing starts afresh over an opened picture
    pad.setPointerCapture(event.pointerId);
    padContext.strokeStyle = "#ffffff";
    padContext.lineWidth = PEN_WIDTH;
    padContext.lineCap = "round";
    padContext.lineJoin = "round";
    const point = padPoint(event);
    stroke = { pointerId: event.pointerId, last: point };
    drawTo(point); // a dot for a tap
  });

  pad.addEventListener("pointermove", (event) => {
    if (!stroke || event.pointerId !== stroke.pointerId) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) drawTo(padPoint(each));
  });

  function endStroke(event) {
    if (!stroke || event.pointerId !== stroke.pointerId) return;
    stroke = null;
    const version = inputChanged();
    classify(ZooMnist.fromCanvas(pad), version);
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  clearButton.addEventListener("click", () => {
    clearPad();
    inputChanged();
    pending = null;
    resetAnswers();
    seen.getContext("2d").clearRect(0, 0, seen.width, seen.height);
    page.lastInput = null;
    list.dataset.state = "idle";
    delete list.dataset.inputVersion;
    status.textContent = "Cleared. Draw a digit, or open a picture of one.";
  });

  // -- opening a picture --

  pickButton.addEventListener("click", () => fileInput.click());

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files && fileInput.files[0];
    fileInput.value = ""; // the same file again is a new change
    if (!file) return;
    const version = inputChanged();
    let result;
    try {
      result = await ZooMnist.fromBlob(file);
    } catch (error) {
      status.textContent = `Could not read ${file.name}: expected a PNG or JPEG picture.`;
      return;
    }
    showPicture(result.picture);
    status.textContent = `Reading ${file.name}…`;
    classify(result.tensor, version);
  });

  /** The opened picture on the pad, whole and centred, for the eye only. */
  function showPicture(picture) {
    clearPad();
    const fit = Math.min(pad.width / picture.width, pad.height / picture.height);
    const width = picture.width * fit, height = picture.height * fit;
    const x = (pad.width - width) / 2, y = (pad.height - height) / 2;
    padContext.fillStyle = "#ffffff"; // transparent pixels on white, as the models get them
    padContext.fillRect(x, y, width, height);
    padContext.imageSmoothingEnabled = fit < 4; // small pictures show their pixels
    padContext.drawImage(picture, x, y, width, height);
    padContext.imageSmoothingEnabled = true;
    page.holdsPicture = true;
  }

  clearPad();
  pad.dataset.inputVersion = "0";
  list.dataset.state = "idle";
  loadModels();
})();
