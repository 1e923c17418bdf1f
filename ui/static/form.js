// The Launch form in the browser (ui/tabs/launch_tab.py): the YAML pane follows every field edit
// (typing, Backspace, paste, a dropdown pick) with no server round trip, and the form's text boxes get
// their field's name as accessible label (Gradio names them after the label *and* the help text).
// window.distillFormSpec = {names: [...], defaults: {...}} comes from the server (DistillSpec).
(() => {
  const spec = window.distillFormSpec;
  const RESERVED = /^(y|yes|n|no|true|false|on|off|null|~)$/i; // YAML 1.1 would read these as bool/null
  const PLAIN = /^[A-Za-z_\/][A-Za-z0-9_.\/:@+-]*$/; // a string YAML reads back as the same string

  function number(n) {
    if (!Number.isFinite(n)) return Number.isNaN(n) ? ".nan" : n > 0 ? ".inf" : "-.inf";
    const s = String(n); // PyYAML reads 1e-07 as a string: its floats need a dot (1.0e-07)
    const [mantissa, exponent] = s.split("e");
    return exponent !== undefined && !mantissa.includes(".") ? `${mantissa}.0e${exponent}` : s;
  }

  function scalar(v) {
    if (v === null || v === undefined) return "null";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number") return number(v);
    if (typeof v === "string") return PLAIN.test(v) && !RESERVED.test(v) && !v.endsWith(":") ? v : JSON.stringify(v);
    if (Array.isArray(v)) return `[${v.map(scalar).join(", ")}]`;
    return JSON.stringify(v); // a mapping: JSON is YAML
  }

  function same(a, b) {
    return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
  }

  // a number field that may stay empty is a text box (form.TEXT_NUMBERS): empty is null, else its number
  function value(name, v) {
    if (!spec.numbers.includes(name) || typeof v !== "string") return v;
    const n = Number(v.trim());
    return v.trim() === "" ? null : Number.isNaN(n) ? v : n;
  }

  // the spec as YAML, only the fields that differ from the defaults (as form.values_to_yaml)
  function toYaml(values) {
    const lines = [];
    spec.names.forEach((name, i) => {
      const v = value(name, values[i]);
      if (!same(v, spec.defaults[name])) lines.push(`${name}: ${scalar(v)}`);
    });
    return lines.length ? lines.join("\n") + "\n" : "{}\n";
  }

  // A field's change event also fires when the server sets it (a preset, the YAML applied): only the
  // user's own edit, made with the focus inside a field, rewrites the pane and makes the fields the side to launch.
  function editing() {
    const field = document.activeElement?.closest?.('[id^="spec-"]');
    return !!field && spec.names.includes(field.id.slice(5));
  }

  let edited = false; // a field was edited since the server last checked the fields

  // js of the fields' change event: inputs (...fields, yaml, source), outputs [yaml, source]
  function fieldChanged(...args) {
    const source = args.pop(), yaml = args.pop();
    if (!editing()) return [yaml, source];
    edited = true;
    return [toYaml(args), "fields"];
  }

  // js of a field's blur (a checkbox's input): a new stamp, whose change asks the server to check the
  // fields, only when something was edited since the last check (moving through the form costs nothing)
  function leftField(stamp) {
    if (!edited) return stamp;
    edited = false;
    return String(Date.now() + Math.random());
  }

  function label(root) {
    for (const box of root.querySelectorAll('[id^="spec-"] input[type="text"], [id^="spec-"] textarea')) {
      const name = box.closest('[id^="spec-"]').id.slice(5);
      if (spec.names.includes(name) && box.getAttribute("aria-label") !== name) box.setAttribute("aria-label", name);
    }
  }

  // accordions render their fields when first opened: label them as they appear
  let queued = false;
  new MutationObserver(() => {
    if (queued) return;
    queued = true; // at most once a frame: the live charts mutate the page often
    requestAnimationFrame(() => { queued = false; label(document); });
  }).observe(document.documentElement, {childList: true, subtree: true});
  window.distillForm = {toYaml, fieldChanged, leftField, scalar};
})();
