// lathe WebXR client: renders the assembly scene streamed by the XR bridge (v2 `scene` frames),
// in an immersive-vr / immersive-ar session when the browser offers one, on a flat page otherwise.
// Chat goes out as v2 `human` frames; the tool buttons send `action` frames; answers are spoken
// through the Web Speech API where it exists. The token comes from the URL fragment (#token=...),
// which browsers never send to a server, and travels as the subprotocol `lathe.token.<token>`.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { VRButton } from "three/addons/webxr/VRButton.js";
import { ARButton } from "three/addons/webxr/ARButton.js";

const TOOLS = [
  ["StartAssemble", {}], ["FrontStep", {}], ["NextStep", {}], ["ReShow", {}], ["Explode", {}], ["Recover", {}],
  ["Enlarge", {}], ["Shrink", {}], ["Rotate", { direction: "Left" }], ["Rotate", { direction: "Right" }],
  ["Rotate", { direction: "Up" }], ["Rotate", { direction: "Down" }], ["HighlightCorrectComponents", {}],
  ["ShowPieces", {}], ["GetCurrentStep", {}], ["GetRemainingStep", {}], ["CheckStepStatusVR", {}],
  ["GoToStep", null], ["FinishedVideo", {}],
];
const HIGHLIGHT = new THREE.Color(0.9, 0.55, 0.0);
const params = new URLSearchParams(location.search);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const state = { frames: 0, scenes: 0, seq: 0, session: params.get("session") || sessionStorage.getItem("lathe-xr-session"),
                step: null, bricks: 0, connected: false, errors: [], lastText: "" };
window.latheXR = state;   // read by tests and by anyone debugging in the console

// --- three.js scene -------------------------------------------------------------------------------
const view = document.getElementById("view");
const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
renderer.xr.enabled = true;
view.appendChild(renderer.domElement);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0xf3f3f6);
const camera = new THREE.PerspectiveCamera(45, 1, 0.01, 50);
camera.position.set(0.55, 0.5, 0.7);
const controls = new OrbitControls(camera, renderer.domElement);
controls.target.set(0, 0.05, 0);
controls.update();
scene.add(new THREE.HemisphereLight(0xffffff, 0x667788, 2.2));
const sun = new THREE.DirectionalLight(0xffffff, 2.0);
sun.position.set(1, 2, 1.5);
scene.add(sun);
const grid = new THREE.GridHelper(1.2, 24, 0xbbbbbb, 0xdddddd);
scene.add(grid);
const model = new THREE.Group();   // carries the root transform (zoom, orientation)
scene.add(model);
const bricks = new Map();          // id -> Object3D
const loader = new GLTFLoader();

function resize() {
  const w = view.clientWidth || 640, h = view.clientHeight || 480;
  renderer.setSize(w, h, false);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
}
window.addEventListener("resize", resize);
resize();

renderer.xr.addEventListener("sessionstart", () => { model.position.set(0, 0.9, -0.6); grid.visible = false; });
renderer.xr.addEventListener("sessionend", () => { model.position.set(0, 0, 0); grid.visible = true; });
renderer.setAnimationLoop(() => renderer.render(scene, camera));

if (navigator.xr) {  // offer the immersive modes the browser supports; the flat page works regardless
  const bar = document.getElementById("xr-buttons");
  navigator.xr.isSessionSupported("immersive-vr").then((ok) => { if (ok) bar.appendChild(VRButton.createButton(renderer)); });
  navigator.xr.isSessionSupported("immersive-ar").then((ok) => { if (ok) bar.appendChild(ARButton.createButton(renderer)); });
}

function idOf(name) { const m = /^brick-(\d+)/.exec(name || ""); return m ? Number(m[1]) : null; }

function decode(b64) {
  const bin = atob(b64), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

function parseGLB(b64) {
  return new Promise((resolve, reject) => loader.parse(decode(b64), "", resolve, reject));
}

function setRoot(root) {
  if (!root) return;
  model.scale.setScalar(root.scale || 1);
  model.rotation.set(THREE.MathUtils.degToRad(root.pitch || 0), THREE.MathUtils.degToRad(root.yaw || 0), 0, "YXZ");
}

function applyHighlight(ids) {
  const on = new Set(ids || []);
  for (const [id, obj] of bricks) {
    obj.traverse((o) => { if (o.isMesh) o.material.emissive.copy(on.has(id) ? HIGHLIGHT : new THREE.Color(0, 0, 0)); });
  }
}

async function addFromGLB(b64) {
  const gltf = await parseGLB(b64);
  const root = gltf.scene.getObjectByName("model") || gltf.scene;
  for (const child of [...root.children]) {
    const id = idOf(child.name);
    if (id === null) continue;
    child.traverse((o) => { if (o.isMesh) o.material = o.material.clone(); });
    if (bricks.has(id)) model.remove(bricks.get(id));
    bricks.set(id, child);
    model.add(child);
  }
}

let sceneChain = Promise.resolve();   // frames apply in order even though GLB parsing is async
function onScene(f) {
  sceneChain = sceneChain.then(async () => {
    if (f.kind === "full") {
      for (const obj of bricks.values()) model.remove(obj);
      bricks.clear();
      if (f.glb) await addFromGLB(f.glb);
    } else {
      for (const id of f.remove || []) { const o = bricks.get(id); if (o) { model.remove(o); bricks.delete(id); } }
      if (f.glb) await addFromGLB(f.glb);
      for (const [id, p] of Object.entries(f.poses || {})) { const o = bricks.get(Number(id)); if (o) o.position.set(...p); }
    }
    setRoot(f.root);
    applyHighlight(f.highlight);
    state.scenes += 1;
    state.seq = f.seq;
    state.step = f.state;
    state.bricks = bricks.size;
    showStep(f);
  }).catch((e) => { state.errors.push(String(e)); send({ type: "scene" }); });  // resync with a full frame
}

// --- the page -----------------------------------------------------------------------------------
const log = document.getElementById("log");
const statusEl = document.getElementById("status");
function line(cls, text) {
  const div = document.createElement("div");
  div.className = cls;
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
}
function showStep(f) {
  const s = f.state || {};
  document.getElementById("step").textContent = `Step ${s.current_step} of ${s.n_steps}${s.exploded ? " (exploded)" : ""}: ${f.step_text || ""}`;
  statusEl.textContent = `step ${s.current_step}/${s.n_steps} · ${bricks.size} bricks · zoom ${s.zoom}`;
}
function speak(text) {
  if ("speechSynthesis" in window && text) {
    try { speechSynthesis.speak(new SpeechSynthesisUtterance(text)); } catch (e) { /* no voice: text only */ }
  }
}

const toolBar = document.getElementById("tools");
let actionId = 0;
for (const [name, args] of TOOLS) {
  const b = document.createElement("button");
  b.textContent = name === "Rotate" ? `Rotate ${args.direction}` : name;
  b.dataset.tool = name;
  b.addEventListener("click", () => {
    let a = args;
    if (name === "GoToStep") {
      const k = Number(prompt("Go to step:", "1"));
      if (!Number.isInteger(k)) return;
      a = { step: k };
    }
    send({ type: "action", id: `a${++actionId}`, name, args: a });
  });
  toolBar.appendChild(b);
}

let turnId = 0;
document.getElementById("chat").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("say");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  sayText(text);
});
function sayText(text) {
  line("human", `You: ${text}`);
  send({ type: "human", id: `h${++turnId}`, session: state.session || undefined, text });
}

const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
if (Recognition) {   // speech in, where the browser has it
  const mic = document.getElementById("mic");
  mic.hidden = false;
  mic.addEventListener("click", () => {
    const r = new Recognition();
    r.lang = "en-US";
    r.onresult = (ev) => sayText(ev.results[0][0].transcript);
    r.start();
  });
}

// --- the socket ---------------------------------------------------------------------------------
let ws = null, retry = 0;
function send(frame) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame)); }

function connect() {
  const url = new URL("../chatbot", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (state.session) url.searchParams.set("session", state.session);
  const protocols = ["lathe.xr.v2"];
  if (token) protocols.push(`lathe.token.${token}`);
  ws = new WebSocket(url, protocols);
  ws.onopen = () => {
    state.connected = true;
    retry = 0;
    statusEl.textContent = "connected";
    send({ type: "event", kind: "metadata", payload: { client: "lathe-webxr", xr: !!navigator.xr } });
  };
  ws.onmessage = (ev) => {
    state.frames += 1;
    let f;
    try { f = JSON.parse(ev.data); } catch (e) { return; }
    if (f.session) { state.session = f.session; sessionStorage.setItem("lathe-xr-session", f.session); }
    if (f.type === "scene") onScene(f);
    else if (f.type === "ai") { state.lastText = f.text; line("ai", `Assistant: ${f.text}`); speak(f.text); }
    else if (f.type === "tool_call") line("tool", `→ ${f.name}(${JSON.stringify(f.args)})`);
    else if (f.type === "action_result") line("tool", `${f.name}: ${f.text}`);
    else if (f.type === "error") { state.errors.push(f.message); line("error", `error (${f.code}): ${f.message}`); }
  };
  ws.onclose = (ev) => {
    state.connected = false;
    if (ev.code === 4000 || ev.code === 4003) { statusEl.textContent = `refused: ${ev.reason || ev.code}`; return; }
    statusEl.textContent = "reconnecting…";
    setTimeout(connect, Math.min(8000, 500 * 2 ** retry++));   // resumes the same session
  };
}
connect();
