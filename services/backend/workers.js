// Which models the connected workers serve, so that a run no worker will ever take is refused
// when it is created instead of waiting.
//
// A worker names its models when it connects: the Socket.IO handshake query `serves=a,b`
// (marcelle_torch.worker). With authentication on, only a connection logged in as the worker
// account counts. The list lives in this process: the chart runs one backend replica.
//
// A new run is refused (BadRequest, naming the models that are served) when workers are
// connected and none serves its model. It is accepted when no worker is connected at all (it
// waits, and the workers' pending timeout fails it if none takes it) or when a worker that
// served the model left less than `graceSeconds` ago (a worker restarting).
'use strict';

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;
const MAX_MODELS = 100;

function announcedModels(socket) {
  const raw = socket.handshake && socket.handshake.query && socket.handshake.query.serves;
  if (typeof raw !== 'string') return [];
  return raw
    .split(',')
    .filter((name) => MODEL_NAME.test(name))
    .slice(0, MAX_MODELS);
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

  /** The models served by the connected workers, and how many workers are connected. */
  function served() {
    const models = new Set();
    let workers = 0;
    // socket.io 2.5 (lib/namespace.js): `connected` holds the namespace's open sockets by id.
    for (const socket of Object.values(io.sockets.connected)) {
      const announced = announcedModels(socket);
      if (announced.length === 0 || !isWorker(socket)) continue;
      workers += 1;
      for (const model of announced) models.add(model);
    }
    return { models, workers };
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

  return { served, refuseUnservedModel };
}

module.exports = { workerRegistry, announcedModels };
