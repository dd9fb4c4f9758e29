// The AMIRA page: a microphone stream and a file upload on the server's own API (api.md).
//
// Every request goes to the server that served the page (relative URLs, so a reverse proxy may
// mount it under a path). The API key, when given, goes in `Authorization: Bearer` on fetches and
// in `?api_key=` on the WebSocket, which browsers cannot give headers.

const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);
const modelSelect = byTestId("model");
const keyInput = byTestId("api-key");
const startButton = byTestId("start");
const fileInput = byTestId("file");
const statusLine = byTestId("status");
const errorLine = byTestId("error");
const transcript = byTestId("transcript");
const details = byTestId("details");

const ERROR_TEXT = {
  unauthorized: "The server refused the API key: enter a valid key in the API key field.",
  capacity_exceeded: "The server is at capacity (all its stream or batch slots are busy): try again in a moment.",
  unknown_model: "The server has no model set of that name: pick one from the list.",
  bad_audio: "The server could not read that audio: use a WAV, FLAC or Ogg file with speech in it.",
  unsupported_media_type: "That kind of file is not supported: upload WAV, FLAC or Ogg (or raw 16 kHz PCM as .raw).",
  too_large: "The audio is longer or larger than the server allows.",
  bad_request: "The server refused the request as malformed.",
  backend_unavailable: "The inference backend is not available yet (Triton down or still loading): try again later.",
  backend_error: "The inference backend failed: see the server's log.",
  timeout: "The inference backend took too long to answer: try again.",
};
const FILE_TYPES = {
  wav: "audio/wav", flac: "audio/flac", ogg: "audio/ogg", oga: "audio/ogg", opus: "audio/ogg",
  raw: "application/octet-stream", pcm: "application/octet-stream",
};

class ApiError extends Error {
  constructor(errorType, message) {
    super(message);
    this.errorType = errorType;
  }
}

function explain(errorType, message) {
  const text = ERROR_TEXT[errorType] || "The server answered with an error.";
  return message ? `${text} (${errorType}: ${message})` : `${text} (${errorType})`;
}

function showError(text) {
  errorLine.textContent = text;
  errorLine.hidden = false;
}

function clearError() {
  errorLine.textContent = "";
  errorLine.hidden = true;
}

function setStatus(text) {
  statusLine.textContent = text;
}

function apiKey() {
  return keyInput.value.trim();
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    throw new ApiError("network", `the server cannot be reached (${error.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const errorType = (body && body.error_type) || `http_${response.status}`;
    throw new ApiError(errorType, (body && body.error) || response.statusText);
  }
  return body;
}

function errorText(error) {
  if (error instanceof ApiError) {
    if (error.errorType === "network") return `The server cannot be reached: ${error.message}.`;
    return explain(error.errorType, error.message);
  }
  return `Something went wrong in the page: ${error.message || error}`;
}

// ---------------------------------------------------------------------------------------------
// Model sets

async function loadModels() {
  const previous = modelSelect.value;
  try {
    const body = await api("v2/models");
    modelSelect.replaceChildren();
    for (const model of body.models) {
      const option = document.createElement("option");
      option.value = model.name;
      const kind = model.type ? `, ${model.type}` : "";
      const vocabulary = model.vocabulary_size ? `, ${model.vocabulary_size} tokens` : "";
      option.textContent = `${model.name}${kind}${vocabulary}`;
      modelSelect.append(option);
    }
    const names = body.models.map((model) => model.name);
    if (names.includes(previous)) modelSelect.value = previous;
    else if (names.includes("default")) modelSelect.value = "default";
    clearError();
    setStatus(`${names.length} model set${names.length === 1 ? "" : "s"}: ready.`);
    return true;
  } catch (error) {
    showError(errorText(error));
    setStatus("");
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The transcript area: finished lines, then the open partial

function seconds(value) {
  return Number(value).toFixed(2);
}

function meanConfidence(words) {
  const known = (words || []).map((word) => word.confidence).filter((c) => typeof c === "number");
  return known.length ? known.reduce((a, b) => a + b, 0) / known.length : null;
}

function addLine({ text, start = null, end = null, confidence = null, source = null }) {
  const line = document.createElement("div");
  line.className = "line";
  line.dataset.testid = "final";
  if (start !== null && end !== null) {
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = `${seconds(start)}–${seconds(end)} s`;
    line.append(time, " "); // real spaces, so that copied text and screen readers keep the words apart
  }
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text || "(no speech recognised)";
  line.append(body);
  if (confidence !== null) {
    const mark = document.createElement("span");
    mark.className = "confidence";
    mark.textContent = `${Math.round(confidence * 100)} %`;
    line.append(" ", mark);
  }
  if (source) {
    const mark = document.createElement("span");
    mark.className = "source";
    mark.textContent = source;
    line.append(" ", mark);
  }
  transcript.insertBefore(line, partialLine());
}

function partialLine() {
  return transcript.querySelector(".partial");
}

function showPartial(committed, transcription) {
  let line = partialLine();
  if (!line) {
    line = document.createElement("div");
    line.className = "line partial";
    line.dataset.testid = "partial";
    const fixed = document.createElement("span");
    fixed.className = "committed";
    const tail = document.createElement("span");
    tail.className = "tentative";
    line.append(fixed, tail);
    transcript.append(line);
  }
  const tentative = transcription.startsWith(committed) ? transcription.slice(committed.length) : "";
  line.querySelector(".committed").textContent = transcription.startsWith(committed) ? committed : transcription;
  line.querySelector(".tentative").textContent = tentative;
}

function clearPartial() {
  const line = partialLine();
  if (line) line.remove();
}

function span(words, fallback) {
  if (fallback && typeof fallback.start === "number") return [fallback.start, fallback.end];
  if (words && words.length) return [words[0].start, words[words.length - 1].end];
  return [null, null];
}

// ---------------------------------------------------------------------------------------------
// Streaming from the microphone

const live = {
  socket: null,
  media: null,
  context: null,
  worklet: null,
  pending: [],
  segmentsShown: new Set(),
  wordsShown: 0,
  complete: false,
  failed: false,
  opened: false,
  stopping: false,
};

function setRunning(running) {
  startButton.textContent = running ? "Stop" : "Start microphone";
  startButton.setAttribute("aria-pressed", String(running));
}

function streamUrl(model) {
  const url = new URL(`v2/decode/stream/${encodeURIComponent(model)}`, document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (apiKey()) url.searchParams.set("api_key", apiKey());
  return url.toString();
}

function sendAudio(bytes) {
  if (live.socket && live.socket.readyState === WebSocket.OPEN) live.socket.send(bytes);
  else live.pending.push(bytes);
}

function handleResult(result) {
  if (result.status === "ERROR") {
    live.failed = true;
    showError(explain(result.error_type, result.message));
    if (result.transcription) addLine({ text: result.transcription, source: "(stream ended early)" });
    clearPartial();
    return;
  }
  const metadata = result.metadata || {};
  if (!result.is_final) {
    showPartial(result.committed || "", result.transcription || "");
    return;
  }
  clearPartial();
  if (result.status !== "COMPLETE") {
    // A segment final: one line with its times and confidence.
    const [start, end] = span(metadata.words, result.segment);
    const confidence = result.segment && typeof result.segment.confidence === "number"
      ? result.segment.confidence : meanConfidence(metadata.words);
    if (result.segment) live.segmentsShown.add(result.segment.id);
    live.wordsShown += (metadata.words || []).length;
    if (result.transcription) addLine({ text: result.transcription, start, end, confidence });
    return;
  }
  live.complete = true;
  if (Array.isArray(metadata.segments) && metadata.segments.length) {
    for (const segment of metadata.segments) {
      if (live.segmentsShown.has(segment.id)) continue;
      const confidence = typeof segment.confidence === "number" ? segment.confidence : null;
      addLine({ text: segment.text, start: segment.start, end: segment.end, confidence });
    }
  } else {
    // No segments from this server: the rest of the stream after the finals already shown is one line.
    const rest = (metadata.words || []).slice(live.wordsShown);
    const text = live.wordsShown ? rest.map((word) => word.word).join(" ") : result.transcription;
    if (text || !transcript.querySelector(".line")) {
      const [start, end] = span(rest, null);
      addLine({ text, start, end, confidence: meanConfidence(rest) });
    }
  }
  setStatus(`Stream complete: ${seconds(metadata.audio_seconds || 0)} s of audio.`);
}

async function explainRefusedSocket() {
  // A browser's WebSocket reports no HTTP status: ask the API why the upgrade was refused.
  try {
    await api("v2/models");
  } catch (error) {
    showError(errorText(error));
    return;
  }
  showError(
    "The server refused the stream connection: a disallowed origin (CORS_ALLOW_ORIGINS), " +
      "a proxy without WebSocket support, or the server is shutting down.",
  );
}

function stopAudio() {
  if (live.media) live.media.getTracks().forEach((track) => track.stop());
  if (live.context) live.context.close().catch(() => {});
  live.media = live.context = live.worklet = null;
}

async function startMicrophone() {
  clearError();
  if (!window.isSecureContext || !navigator.mediaDevices || !window.AudioWorkletNode) {
    showError(
      "The microphone needs a secure page: open it over https, or at http://127.0.0.1:PORT/ or " +
        "http://localhost:PORT/ on the machine that runs the server.",
    );
    return;
  }
  const model = modelSelect.value;
  if (!model) {
    showError("No model set to stream to: the model list did not load (see above).");
    return;
  }
  Object.assign(live, {
    pending: [], segmentsShown: new Set(), wordsShown: 0,
    complete: false, failed: false, opened: false, stopping: false,
  });
  setRunning(true);
  startButton.disabled = true;
  try {
    live.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    live.context = new AudioContext();
    await live.context.audioWorklet.addModule(new URL("pcm-worklet.js", import.meta.url));
    const source = live.context.createMediaStreamSource(live.media);
    live.worklet = new AudioWorkletNode(live.context, "pcm16-resampler", { numberOfOutputs: 1 });
    const silent = live.context.createGain();
    silent.gain.value = 0; // keeps the graph pulled without playing the microphone back
    source.connect(live.worklet).connect(silent).connect(live.context.destination);
  } catch (error) {
    stopAudio();
    setRunning(false);
    startButton.disabled = false;
    showError(`The microphone cannot be used: ${error.message || error}`);
    return;
  }
  const socket = new WebSocket(streamUrl(model));
  socket.binaryType = "arraybuffer";
  live.socket = socket;
  live.worklet.port.onmessage = (event) => {
    if (event.data === "flushed") {
      sendAudio(new Uint8Array([0])); // end of stream: the server sends the final result and closes
      stopAudio();
    } else {
      sendAudio(event.data);
    }
  };
  socket.onopen = () => {
    live.opened = true;
    for (const bytes of live.pending) socket.send(bytes);
    live.pending = [];
    setStatus(`Listening (model set ${model})…`);
  };
  socket.onmessage = (event) => {
    try {
      handleResult(JSON.parse(event.data));
    } catch (error) {
      showError(`The server sent a result the page cannot read: ${error.message}`);
    }
  };
  socket.onclose = (event) => {
    stopAudio();
    live.socket = null;
    setRunning(false);
    startButton.disabled = false;
    if (!live.opened) {
      explainRefusedSocket();
    } else if (!live.complete && !live.failed) {
      showError(`The stream ended without a final result (close code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`);
    }
    if (!live.complete) setStatus("");
  };
  startButton.disabled = false;
  setStatus("Connecting…");
}

function stopMicrophone() {
  if (live.stopping) return;
  live.stopping = true;
  startButton.disabled = true;
  setStatus("Finishing: waiting for the final result…");
  if (live.worklet) live.worklet.port.postMessage("flush");
  else if (live.socket) sendAudio(new Uint8Array([0]));
  const socket = live.socket;
  setTimeout(() => {
    if (socket && socket.readyState !== WebSocket.CLOSED) socket.close();
  }, 20000);
}

// ---------------------------------------------------------------------------------------------
// Uploads: the batch endpoint, words and SRT

function srtTime(value) {
  const total = Math.max(0, Math.round(value * 1000));
  const pad = (number, width) => String(number).padStart(width, "0");
  const hours = Math.floor(total / 3600000);
  const minutes = Math.floor((total % 3600000) / 60000);
  const secs = Math.floor((total % 60000) / 1000);
  return `${pad(hours, 2)}:${pad(minutes, 2)}:${pad(secs, 2)},${pad(total % 1000, 3)}`;
}

// Cues of at most 42 characters and 6 s, split at pauses of 0.8 s or more.
function srtFromWords(words) {
  const cues = [];
  let cue = null;
  for (const word of words) {
    const fits = cue && word.start - cue.end < 0.8 && word.end - cue.start <= 6 &&
      cue.text.length + 1 + word.word.length <= 42;
    if (fits) {
      cue.text += ` ${word.word}`;
      cue.end = word.end;
    } else {
      cue = { start: word.start, end: word.end, text: word.word };
      cues.push(cue);
    }
  }
  return cues.map((c, i) => `${i + 1}\n${srtTime(c.start)} --> ${srtTime(c.end)}\n${c.text}\n`).join("\n");
}

function showDetails(name, words) {
  document.getElementById("details-name").textContent = name;
  const body = details.querySelector("tbody");
  body.replaceChildren();
  for (const word of words) {
    const row = document.createElement("tr");
    const confidence = typeof word.confidence === "number" ? word.confidence.toFixed(2) : "–";
    for (const value of [word.word, seconds(word.start), seconds(word.end), confidence]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    body.append(row);
  }
  const srt = srtFromWords(words);
  byTestId("srt").textContent = srt;
  const link = byTestId("srt-download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([srt], { type: "application/x-subrip" }));
  link.download = `${name.replace(/\.[^.]*$/, "") || "transcript"}.srt`;
  details.hidden = false;
}

async function transcribeFile(file) {
  clearError();
  const model = modelSelect.value;
  if (!model) {
    showError("No model set to transcribe with: the model list did not load (see above).");
    return;
  }
  const extension = file.name.split(".").pop().toLowerCase();
  const type = FILE_TYPES[extension] || file.type || "application/octet-stream";
  setStatus(`Transcribing ${file.name}…`);
  try {
    const result = await api(`v2/decode/batch/${encodeURIComponent(model)}`, {
      method: "POST",
      headers: { "Content-Type": type },
      body: file,
    });
    const metadata = result.metadata || {};
    const words = metadata.words || [];
    const [start, end] = span(words, null);
    addLine({ text: result.transcription, start, end, confidence: meanConfidence(words), source: file.name });
    showDetails(file.name, words);
    setStatus(`${file.name}: ${seconds(metadata.audio_seconds || 0)} s of audio in ${Math.round(metadata.processing_time_ms || 0)} ms.`);
  } catch (error) {
    showError(errorText(error));
    setStatus("");
  }
}

// ---------------------------------------------------------------------------------------------

startButton.addEventListener("click", () => {
  if (live.socket || live.media) stopMicrophone();
  else startMicrophone();
});
fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  fileInput.value = ""; // the same file may be chosen again
  if (file) transcribeFile(file);
});
keyInput.value = sessionStorage.getItem("amira-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("amira-api-key", apiKey());
  loadModels();
});
document.body.dataset.ready = "true";
loadModels();
