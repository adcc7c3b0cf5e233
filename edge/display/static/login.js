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
  const next = new URLSearchParams(location.search).get("next") || "/";
  location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
});
