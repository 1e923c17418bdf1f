// Destructive buttons ask first (Cancel run, Cancel sweep): a capture-phase click listener on the
// document runs before Gradio's own handler on the button; a dismissed dialog stops the click there,
// so no event reaches the server (nothing changes). Keyboard presses of the button are clicks too.
// The Gradio endpoints themselves (cancel_run, cancel_sweep) are unchanged: a client asks in its own way.
(() => {
  "use strict";
  const value = (selector) => { const el = document.querySelector(selector); return el ? el.value.trim() : ""; };
  const CONFIRMS = {
    "cancel-run": () => {
      const id = value("#selected-run input");
      return id && `Cancel run ${id}?\n\nA queued run never starts; a running one stops at its next step, ` +
        "keeping a checkpoint (Resume continues from it).";
    },
    "cancel-sweep": () => {
      const id = value("#sweep-id input");
      return id && `Cancel sweep ${id}?\n\nEvery queued and running run of the sweep is cancelled.`;
    },
  };
  document.addEventListener("click", (e) => {
    const button = e.target instanceof Element ? e.target.closest("button") : null;
    const ask = button && CONFIRMS[button.id];
    const question = ask && ask();
    if (!question) return; // nothing selected: the server's own message says so
    if (!window.confirm(question)) { e.stopImmediatePropagation(); e.preventDefault(); }
  }, true);
})();
