// Progressive enhancement only: every page reads and submits without this script.
import { initAll } from "./nhsuk/nhsuk-frontend-10.6.1.min.js";

document.body.classList.add("js-enabled", "nhsuk-frontend-supported");
initAll();

// Sign-in link: /pages/sign-in#token=hvn_... fills the token (the fragment never reaches the
// server) and removes it from the address bar.
const tokenField = document.querySelector("[data-fill-from-fragment=token]");
if (tokenField && location.hash.startsWith("#token=")) {
  tokenField.value = decodeURIComponent(location.hash.slice(7));
  history.replaceState(null, "", location.pathname + location.search);
}

// Upload: a manifest chosen (or dropped) fills in the manifest's fields; it is not uploaded.
for (const input of document.querySelectorAll("input[data-manifest-for]")) {
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (!file) return;
    try {
      const manifest = JSON.parse(await file.text());
      for (const name of ["source", "sender", "period_start", "period_end", "sha256", "rows"]) {
        const field = document.getElementById(name);
        if (field && manifest[name] !== undefined) field.value = String(manifest[name]);
      }
    } catch (error) {
      input.setCustomValidity("This is not a manifest (JSON) file");
      input.reportValidity();
    }
  });
}

// A file can be dropped anywhere on its question, not only on the button.
for (const input of document.querySelectorAll("input[type=file]")) {
  const zone = input.closest(".nhsuk-form-group");
  if (!zone) continue;
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("haven-drop");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("haven-drop"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("haven-drop");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });
}
