// sluice live reload: include with <script src="/_sluice/reload.js"></script>.
// Under `sluice --reload` the page reloads itself after each successful
// reload of the app, and shows the error (file and line) over the page when
// a change does not load.  Without --reload the server sends an empty script.
(() => {
  "use strict";
  const es = new EventSource("/_sluice/reload");
  let overlay = null;

  es.addEventListener("reload", () => location.reload());

  // An event named "error" arrives as a MessageEvent with data; the plain
  // Event with the same name means only that the connection dropped (the
  // EventSource reconnects by itself).
  es.addEventListener("error", (e) => {
    if (!(e instanceof MessageEvent) || !e.data) return;
    let info;
    try { info = JSON.parse(e.data); } catch { info = { message: e.data }; }
    show(info);
  });

  function show(info) {
    if (!overlay) {
      overlay = document.createElement("div");
      overlay.setAttribute("role", "alert");
      overlay.style.cssText =
        "position:fixed;inset:auto 1rem 1rem 1rem;z-index:2147483647;max-height:60vh;overflow:auto;" +
        "background:#2b0f12;color:#ffd7d9;border:1px solid #ff6b6b;border-radius:10px;padding:1rem 1.2rem;" +
        "font:14px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;box-shadow:0 10px 30px #0008";
      document.body.appendChild(overlay);
    }
    overlay.replaceChildren();
    const title = document.createElement("div");
    title.style.cssText = "font-weight:700;margin-bottom:.4rem;color:#ff8f8f";
    title.textContent = "sluice: the app did not reload" +
      (info.file ? ` — ${info.file}${info.line ? ":" + info.line : ""}` : "");
    const msg = document.createElement("pre");
    msg.style.cssText = "margin:0;white-space:pre-wrap";
    msg.textContent = info.message || "unknown error";
    const note = document.createElement("div");
    note.style.cssText = "margin-top:.6rem;opacity:.7";
    note.textContent = "The previous version keeps serving. Fix the file and save: this page reloads.";
    overlay.append(title, msg, note);
  }
})();
