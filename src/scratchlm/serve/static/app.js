// The chat page of `scratchlm serve`: talks to the server's own /v1/chat/completions with streaming,
// keeps the conversation (and the settings) in localStorage (the API key in sessionStorage, for this tab only,
// unless "Remember the key" is ticked), shows the reasoning folded apart from the
// answer. Plain JavaScript, no libraries: the page must work offline.
"use strict";

const $ = (id) => document.getElementById(id);
const log = $("log"), input = $("input"), errorBox = $("error");
const SETTINGS = ["system", "temperature", "max-tokens", "thinking", "remember-key", "api-key"];
let history = JSON.parse(localStorage.getItem("scratchlm.history") || "[]");  // [{role, content, reasoning?}]
let modelId = null;
let controller = null;  // AbortController of the answer being streamed

function save() { localStorage.setItem("scratchlm.history", JSON.stringify(history)); }

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// An error response of the server has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
class ServerError extends Error {
  constructor(message, code, param) { super(message); this.code = code; this.param = param; }
}

async function serverError(response) {
  try {
    const e = (await response.json()).error;
    if (e && e.message) return new ServerError(`${response.status}: ${e.message}`, e.code, e.param);
  } catch (err) { /* not JSON */ }
  return new ServerError(`${response.status} ${response.statusText}`);
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (role === "assistant") {
    const details = document.createElement("details");
    details.hidden = true;
    details.innerHTML = "<summary>Reasoning</summary><div class=\"reasoning\"></div>";
    const answer = document.createElement("span");
    answer.className = "answer";
    answer.textContent = text || "";
    div.append(details, answer);
  } else {
    div.textContent = text;
  }
  log.append(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

function setReasoning(div, text) {
  const details = div.querySelector("details");
  details.hidden = !text;
  details.querySelector(".reasoning").textContent = text;
}

function render() {
  log.replaceChildren();
  for (const m of history) {
    const div = bubble(m.role, m.content);
    if (m.role === "assistant" && m.reasoning) setReasoning(div, m.reasoning);
  }
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (!r.ok) throw await serverError(r);
    const card = (await r.json()).data[0];
    modelId = card.id;
    $("model").textContent = `${card.id} · context ${card.max_model_len} tokens`;
  } catch (e) {
    $("model").textContent = "not connected";
    showError("Could not reach the server: " + e.message);
  }
}

// Server-sent events arrive in arbitrary pieces: split on blank lines, keep the unfinished tail.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of history) messages.push({ role: m.role, content: m.content });  // reasoning is not sent back
  return {
    model: modelId || undefined, messages, stream: true,
    temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value) || undefined,
    chat_template_kwargs: { enable_thinking: $("thinking").checked },
  };
}

function notice(text, before) {
  const div = document.createElement("div");
  div.className = "msg notice";
  div.textContent = text;
  log.insertBefore(div, before.previousSibling);
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  input.disabled = busy;
}

async function send(text) {
  showError("");
  if (!modelId) await loadModel();
  history.push({ role: "user", content: text });
  save();
  const asked = bubble("user", text);
  const div = bubble("assistant", "");
  div.classList.add("streaming");
  const answer = div.querySelector(".answer");
  let content = "", reasoning = "", finish = null;
  controller = new AbortController();
  setBusy(true);
  try {
    let r;
    for (;;) {
      r = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(requestBody()), signal: controller.signal,
      });
      if (r.ok) break;
      const err = await serverError(r);
      // Too long for the context: drop the oldest exchange (never the new question) and ask again.
      if (err.code !== "context_length_exceeded" || err.param !== "messages" || history.length < 3) throw err;
      history.splice(0, 2);
      notice("(the oldest exchange was dropped to fit the model's context)", div);
    }
    for await (const chunk of events(r)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      const d = choice.delta || {};
      if (d.reasoning_content) { reasoning += d.reasoning_content; setReasoning(div, reasoning); }
      if (d.content) { content += d.content; answer.textContent = content; }
      if (choice.finish_reason) finish = choice.finish_reason;
      log.scrollTop = log.scrollHeight;
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else showError(e.message);
  } finally {
    controller = null;
    div.classList.remove("streaming");
    setBusy(false);
    input.focus();
  }
  if (finish && finish !== "stop") {
    const note = document.createElement("span");
    note.className = "finish";
    note.textContent = finish === "length" ? "(max tokens reached)" : `(${finish})`;
    div.append(note);
  }
  if (content || reasoning) {
    history.push({ role: "assistant", content, reasoning });
  } else {
    history.pop();  // nothing came back: the question goes back into the box to be asked again
    div.remove();
    asked.remove();
    if (!input.value) input.value = text;
  }
  save();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = "";
  send(text);
});
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("new-chat").addEventListener("click", () => { history = []; save(); render(); showError(""); });
$("toggle-settings").addEventListener("click", () => {
  const panel = $("settings");
  panel.hidden = !panel.hidden;
  $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
});
// The key is a secret: kept for this tab (sessionStorage) unless the user asks to remember it (localStorage).
function keyStore() { return $("remember-key").checked ? localStorage : sessionStorage; }
function saveKey() {
  const k = "scratchlm.setting.api-key", value = $("api-key").value;
  localStorage.removeItem(k);
  sessionStorage.removeItem(k);
  if (value) keyStore().setItem(k, value);
}
for (const id of SETTINGS) {  // settings survive a reload
  const el = $(id), key = "scratchlm.setting." + id;
  const stored = id === "api-key" ? keyStore().getItem(key) : localStorage.getItem(key);
  if (stored !== null) { if (el.type === "checkbox") el.checked = stored === "true"; else el.value = stored; }
  el.addEventListener("change", () => {
    if (id === "api-key" || id === "remember-key") saveKey();
    else localStorage.setItem(key, el.type === "checkbox" ? String(el.checked) : el.value);
    if (id === "remember-key") localStorage.setItem(key, String(el.checked));
    if (id === "api-key") loadModel();
  });
}
render();
loadModel();
input.focus();
