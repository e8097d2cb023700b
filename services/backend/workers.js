// Which models the connected workers serve, so that a run no worker will ever take is refused
// when it is created instead of waiting.
//
// A worker names its models when it connects: the Socket.IO handshake query
// `serves=name[:task[:CxS]],...` (marcelle_torch.worker): an image classifier's channels and
// size, e.g. `digits:classification:1x128,digits-generator:generation`. With authentication on, only a
// connection logged in as the worker account counts. The list lives in this process: the chart
// runs one backend replica.
//
// The `served-models` service (find only, for anyone, like the package's `info`) answers that
// list, so that a page offers the models the connected workers serve, with what each takes.
//
// A new run is refused (BadRequest, naming the models that are served) when workers are
// connected and none serves its model. It is accepted when no worker is connected at all (it
// waits, and the workers' pending timeout fails it if none takes it) or when a worker that
// served the model left less than `graceSeconds` ago (a worker restarting).
'use strict';

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;
const TASKS = new Set(['classification', 'generation']);
const IMAGE = /^([13])x([1-9][0-9]{0,3})$/; // channels x size
const MAX_MODELS = 100;

/** What a connection announced: [{name, task, channels, size}] (null when not said). */
function announcedEntries(socket) {
  const raw = socket.handshake && socket.handshake.query && socket.handshake.query.serves;
  if (typeof raw !== 'string') return [];
  const entries = [];
  for (const item of raw.split(',')) {
    const [name, task, image, ...extra] = item.split(':');
    if (!MODEL_NAME.test(name) || extra.length > 0) continue;
    const [, channels, size] = (task === 'classification' && IMAGE.exec(image || '')) || [];
    entries.push({
      name,
      task: TASKS.has(task) ? task : null,
      channels: channels ? Number(channels) : null,
      size: size ? Number(size) : null,
    });
    if (entries.length === MAX_MODELS) break;
  }
  return entries;
}

function announcedModels(socket) {
  return announcedEntries(socket).map((entry) => entry.name);
}

function workerRegistry(io, { authEnabled, BadRequest, graceSeconds = 30, now = Date.now }) {
  const isWorker = (socket) => !authEnabled || Boolean(socket.feathers?.user && socket.feathers.user.role === 'worker');
  const lastLeft = new Map(); // model -> when the last connection that served it closed

  io.on('connection', (socket) => {
    const models = announcedModels(socket);
    if (models.length === 0) return;
    socket.on('disconnect', () => {
      if (isWorker(socket)) for (const model of models) lastLeft.set(model, now());
    });
  });

  /** The connected workers' announcements, one list per worker connection. */
  function workerEntries() {
    // socket.io 2.5 (lib/namespace.js): `connected` holds the namespace's open sockets by id.
    return Object.values(io.sockets.connected)
      .filter(isWorker)
      .map(announcedEntries)
      .filter((entries) => entries.length > 0);
  }

  /** The models served by the connected workers, and how many workers are connected. */
  function served() {
    const perWorker = workerEntries();
    return { models: new Set(perWorker.flat().map((e) => e.name)), workers: perWorker.length };
  }

  /** served-models.find: [{name, task, channels, size, workers}] sorted by name. */
  function list() {
    const byName = new Map();
    for (const entry of workerEntries().flat()) {
      const known = byName.get(entry.name);
      if (known) known.workers += 1;
      else byName.set(entry.name, { ...entry, workers: 1 });
    }
    return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  // runs before-create hook, after the document's shape is checked (runs-hooks.js).
  function refuseUnservedModel(context) {
    if (!context.params.provider) return context;
    const { model } = context.data;
    const { models, workers } = served();
    if (workers === 0 || models.has(model)) return context;
    const left = lastLeft.get(model);
    if (left !== undefined && now() - left < graceSeconds * 1000) return context;
    throw new BadRequest(
      `no worker serves the model ${JSON.stringify(model)}: the connected workers serve ${[...models].sort().join(', ')}`,
    );
  }

  return { served, list, refuseUnservedModel };
}

module.exports = { workerRegistry, announcedModels };
