"use strict";
// The login of a display served off loopback: name + PIN -> session cookie, then back where the user was going.
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = document.getElementById("message");
  const response = await fetch("/api/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      name: document.getElementById("login-name").value,
      pin: document.getElementById("login-pin").value,
    }),
  });
  if (!response.ok) {
    message.textContent = (await response.json()).error;
    return;
  }
  location.assign(safeNext(new URLSearchParams(location.search).get("next")));
});

// Only a path on this box: never a scheme, another host, or a backslash (browsers read "/\\host" as "//host").
function safeNext(next) {
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.includes("\\") || /[\u0000-\u001f\u007f]/.test(next)) {
    return "/";
  }
  const url = new URL(next, location.origin);
  return url.origin === location.origin ? url.pathname + url.search + url.hash : "/";
}
