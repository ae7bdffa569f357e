// Browser side of the review workspace terminal: xterm.js <-> WebSocket.
// Input and resizes go up as JSON text frames; output comes down as binary.
(function () {
  "use strict";
  var element = document.getElementById("terminal");
  var status = document.getElementById("status");
  var term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  var fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(element);
  fit.fit();
  window.rwTerminal = term; // lets tests read the screen buffer

  var scheme = location.protocol === "https:" ? "wss:" : "ws:";
  var url = scheme + "//" + location.host + element.dataset.socket +
    "?rows=" + term.rows + "&cols=" + term.cols;
  var socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";

  socket.onopen = function () { status.textContent = "connected"; term.focus(); };
  socket.onmessage = function (event) {
    if (typeof event.data === "string") { term.write(event.data); }
    else { term.write(new Uint8Array(event.data)); }
  };
  socket.onclose = function (event) {
    status.textContent = "disconnected" + (event.reason ? ": " + event.reason : "");
    document.body.dataset.closed = "true";
  };
  term.onData(function (data) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "input", data: data }));
    }
  });
  term.onResize(function (size) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "resize", rows: size.rows, cols: size.cols }));
    }
  });
  window.addEventListener("resize", function () { fit.fit(); });
})();
