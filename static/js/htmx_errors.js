/* Every failed htmx request says why, in place (loaded on every page by base.html).
 *
 * htmx swaps nothing for a 4xx/5xx answer by default, so a form or list looked dead. Here:
 * - an HTML answer that carries the request's target itself (the encode form's #results with its
 *   error paragraph) is swapped in as a success would be;
 * - any other answer (the API's JSON error shape {"error": {"status", "message", "detail"}}, a
 *   full HTML error page, plain text) puts its message in an alert just before the target,
 *   leaving the target as it was; the alert goes away at the target's next request.
 * Network failures and timeouts get an alert too.
 */
(function () {
  "use strict";

  function firstText(doc, selector) {
    var el = doc.querySelector(selector);
    return el && el.textContent.trim() ? el.textContent.trim() : null;
  }

  function messageOf(xhr) {
    var type = xhr.getResponseHeader("Content-Type") || "";
    var text = xhr.responseText || "";
    if (type.indexOf("json") >= 0) {
      try {
        var body = JSON.parse(text);
        if (body && body.error && body.error.message) return String(body.error.message);
        if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (e) { /* fall through to the status line */ }
    } else if (type.indexOf("html") >= 0) {
      var doc = new DOMParser().parseFromString(text, "text/html");
      var found = firstText(doc, ".error-message") || firstText(doc, "[role=alert]") || firstText(doc, "main h1");
      if (found) return found;
    } else if (text.trim()) {
      return text.trim().slice(0, 500);
    }
    return "The server answered " + xhr.status + (xhr.statusText ? " " + xhr.statusText : "") + ".";
  }

  function alertFor(target) {
    var prev = target.previousElementSibling;
    return prev && prev.classList.contains("htmx-error") ? prev : null;
  }

  function show(target, status, message) {
    if (!target || !target.parentNode) return;
    var box = alertFor(target);
    if (!box) {
      box = document.createElement("p");
      box.className = "htmx-error error";
      box.setAttribute("role", "alert");
      target.parentNode.insertBefore(box, target);
    }
    box.dataset.status = String(status);
    box.textContent = (status ? status + ": " : "") + message;
  }

  function carriesTarget(xhr, target) {
    var type = xhr.getResponseHeader("Content-Type") || "";
    if (type.indexOf("html") < 0 || !target || !target.id) return false;
    var doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    // A full error page is not the fragment the target expects, even if it reuses the id.
    return !!doc.getElementById(target.id) && !doc.querySelector(".error-page");
  }

  document.addEventListener("htmx:beforeSwap", function (evt) {
    var xhr = evt.detail.xhr, target = evt.detail.target;
    if (xhr.status < 400) return;
    if (carriesTarget(xhr, target)) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
      return;
    }
    evt.detail.shouldSwap = false;
    show(target, xhr.status, messageOf(xhr));
  });

  document.addEventListener("htmx:beforeRequest", function (evt) {
    var box = evt.detail.target && alertFor(evt.detail.target);
    if (box) box.remove();
  });

  document.addEventListener("htmx:sendError", function (evt) {
    show(evt.detail.target, 0, "The server could not be reached; try again.");
  });
  document.addEventListener("htmx:timeout", function (evt) {
    show(evt.detail.target, 0, "The server took too long to answer; try again.");
  });

  window.protsaeErrors = { messageOf: messageOf, show: show };
})();
