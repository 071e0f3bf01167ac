// Drives the published Webex client socket (@webex/internal-plugin-mercury,
// dist/socket/socket.js: the Node build, on the "ws" WebSocket) against a
// data-channel socket URL, and reports what the socket does as JSON lines
// on stdout, one per event, in the order they happen:
//
//   {"event": "open"}                                  authorized, buffer state seen
//   {"event": "open-failed", "name", "code", "reason"} the open was refused
//   {"event": "message", "data": {...}}                a server frame other than pong
//   {"event": "pong", "data": {...}}                   a pong (the socket checked its id)
//   {"event": "sequence-mismatch", "actual", "expected"}
//   {"event": "close", "code", "reason"}               the socket closed
//
// Usage: node driver.js MODULES_DIR CONFIG_JSON
//   MODULES_DIR  the directory whose node_modules holds the client
//   CONFIG_JSON  {"url", "token", "trackingId", "pingInterval", "pongTimeout",
//                 "forceCloseDelay"} (times in milliseconds)
//
// Commands on stdin, one a line: "close" closes the socket (1000) and exits
// once it is closed. End of stdin does the same, so the driver never
// outlives the process that started it.

'use strict';

const path = require('path');
const readline = require('readline');
const {createRequire} = require('module');

const [modulesDir, configJson] = process.argv.slice(2);
if (!modulesDir || !configJson) {
  process.stderr.write('usage: node driver.js MODULES_DIR CONFIG_JSON\n');
  process.exit(2);
}
const config = JSON.parse(configJson);
const load = createRequire(path.join(path.resolve(modulesDir), 'package.json'));
const Socket = load('@webex/internal-plugin-mercury/dist/socket/socket.js').default;

function report(event, fields) {
  process.stdout.write(JSON.stringify({event, ...fields}) + '\n');
}

// The socket logs through this; warnings and errors go to stderr (the test
// shows them when it fails), the rest is dropped.
const logger = {
  log() {},
  debug() {},
  info() {},
  warn(...args) { process.stderr.write(`warn: ${args.map(String).join(' ')}\n`); },
  error(...args) { process.stderr.write(`error: ${args.map(String).join(' ')}\n`); },
};

const socket = new Socket();
let finished = false;

function finish(code) {
  if (finished) {
    return;
  }
  finished = true;
  // Let stdout drain before the process ends.
  process.stdout.write('', () => process.exit(code));
}

socket.on('message', (event) => report('message', {data: event.data}));
socket.on('pong', (event) => report('pong', {data: event.data}));
socket.on('sequence-mismatch', (actual, expected) => report('sequence-mismatch', {actual, expected}));
socket.on('close', (event) => {
  report('close', {code: event.code, reason: event.reason});
  finish(0);
});

socket
  .open(config.url, {
    token: config.token,
    trackingId: config.trackingId,
    pingInterval: config.pingInterval,
    pongTimeout: config.pongTimeout,
    forceCloseDelay: config.forceCloseDelay,
    logger,
  })
  .then(() => report('open', {}))
  .catch((error) => {
    report('open-failed', {name: error && error.name, code: error && error.code, reason: error && error.reason});
    finish(1);
  });

function closeAndExit() {
  if (finished) {
    return;
  }
  socket.close({code: 1000, reason: 'done'}).then(
    () => finish(0),
    () => finish(1)
  );
}

const commands = readline.createInterface({input: process.stdin});
commands.on('line', (line) => {
  if (line.trim() === 'close') {
    closeAndExit();
  }
});
commands.on('close', closeAndExit);
