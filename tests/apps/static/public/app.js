document.querySelector("h1").textContent += " (js loaded)";
