// The page's only script (the Content-Security-Policy allows no inline script): an image that
// fails to load (a URL image gone, a file missing) shows the placeholder instead of a broken icon.
"use strict";
(function () {
  const PLACEHOLDER = "/static/placeholder.svg";
  function fallBack(img) {
    if (!img.src.endsWith(PLACEHOLDER)) {
      img.src = PLACEHOLDER;
      img.classList.add("placeholder");
    }
  }
  for (const img of document.querySelectorAll("img.thumb")) {
    img.addEventListener("error", () => fallBack(img));
    if (img.complete && img.naturalWidth === 0) fallBack(img);
  }
})();
