// What may reach the Marcelle backend, and who may do what (start.js wires these in).
//
// 1. Service names. @marcellejs/backend 0.6.5 serves any name through its on-demand factory
//    (`app.use('/:serviceName')`, lib/services/generic/dynamic.service.js) and opens
//    `path.join(nedb, name + '.db')` for it (lib/models/generic-nedb.model.js), with the name
//    URL-decoded: `/x%2F..%2Fusers` reached users.db, `/..%2F..%2Fa` wrote outside the data
//    directory, `/runs.db%2Fx` crashed the process. `restGuard` (in front of the whole Express
//    app) and `socketGuard` (on every Socket.IO packet) let through only the names this app
//    serves; anything else is a JSON 404 that never reaches the package.
//    Both also refuse a Host that is not one of the backend's names (DNS rebinding) and a
//    browser Origin that is not the web app's (CORS, and websockets, which have no CORS).
// 2. Access. `accessPolicy` is the first application `before` hook: the edge checks of
//    validation.js on every external call, then what policy.js says (who may do what: the
//    one statement of it, which the table in docs/security.md is rendered from), with
//    authentication (tokens of a logged-out account refused) for every call that is not public.
// 3. Logins. `loginLimits` counts password attempts per client address and per account and
//    address (rate-limiter-flexible) and answers 429 with Retry-After.
'use strict';

const { RateLimiterMemory } = require('rate-limiter-flexible');
const errors = require('@feathersjs/errors');
const { authenticate } = require('@feathersjs/authentication').hooks;
const { checkShape, checkCall } = require('./validation');
const policy = require('./policy');
const { checkSocketHandshakes } = require('./package-patches');

const { BadRequest, Forbidden, MethodNotAllowed, NotAuthenticated, NotFound, TooManyRequests } = errors;

const SAFE_NAME = /^[a-z0-9-]+$/;
// Names of the package's own services (users, authentication, info, assets, model stores,
// its debugger): never made by the on-demand factory, so never in whitelist.services.
const RESERVED = new Set([
  'users',
  'authentication',
  'info',
  'assets',
  'tfjs-models',
  'onnx-models',
  'feathers-debugger',
  'served-models',
]);
// The Feathers 4 socket methods (@feathersjs/transport-commons lib/socket/index.js) and their
// arguments after the service name.
const SOCKET_ARGUMENTS = {
  find: ['query'],
  get: ['id', 'query'],
  create: ['data', 'query'],
  update: ['id', 'data', 'query'],
  patch: ['id', 'data', 'query'],
  remove: ['id', 'query'],
};
const SOCKET_METHODS = new Set(Object.keys(SOCKET_ARGUMENTS));

/**
 * What @feathersjs/feathers 4 lib/hooks/base.js would refuse with a plain Error (a 500): an id
 * missing, data that is not an object. Said here as the client's mistake; null if none.
 */
function socketArgumentsProblem(method, args) {
  const names = SOCKET_ARGUMENTS[method];
  if (args.length > names.length) return `too many arguments (${names.join(', ')})`;
  for (const [i, name] of names.entries()) {
    const value = args[i];
    if (name === 'id' && value === undefined) return 'an id must be given (null for many)';
    if (name === 'data' && (value === null || typeof value !== 'object')) return 'the data must be an object';
    if (
      name === 'query' &&
      value !== undefined &&
      (value === null || typeof value !== 'object' || Array.isArray(value))
    ) {
      return 'the query must be an object';
    }
  }
  return null;
}

/** Checks whitelist.services; returns an error message, or null when it is a list of safe names. */
function checkServiceNames(services) {
  if (!Array.isArray(services)) {
    return `whitelist.services must be a list of service names (e.g. ["runs"]), got ${JSON.stringify(services)}`;
  }
  for (const name of services) {
    if (typeof name !== 'string' || !SAFE_NAME.test(name)) {
      return `whitelist.services: ${JSON.stringify(name)} is not a service name (lowercase letters, digits and -)`;
    }
    if (RESERVED.has(name)) {
      return `whitelist.services: "${name}" is one of the backend's own services, not a data service`;
    }
  }
  if (!services.includes('runs')) return 'whitelist.services must include "runs"';
  return null;
}

function notServed(served) {
  return new NotFound(`No such service: this backend serves ${[...served].sort().join(', ')}`);
}

/**
 * The client's address: the socket's peer, or, behind `trustedProxies` proxies that each
 * append to X-Forwarded-For (nginx: $proxy_add_x_forwarded_for), the hop the farthest
 * trusted proxy saw. Entries before it are the client's to write, so they are never used.
 */
function clientAddress(remoteAddress, headers, trustedProxies) {
  const forwarded = trustedProxies > 0 && headers && headers['x-forwarded-for'];
  if (typeof forwarded === 'string') {
    const hops = forwarded
      .split(',')
      .map((h) => h.trim())
      .filter(Boolean);
    if (hops.length > 0) return hops[Math.max(0, hops.length - trustedProxies)];
  }
  return remoteAddress || 'unknown';
}

/**
 * The Host header names one of `allowedHosts` ("*": any). A page of another site whose name
 * is made to resolve to 127.0.0.1 (DNS rebinding) sends its own name, so it is refused.
 */
function hostAllowed(host, allowedHosts) {
  if (allowedHosts.includes('*')) return true;
  if (typeof host !== 'string') return false;
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.split(':')[0];
  return allowedHosts.includes(name.toLowerCase());
}

/**
 * A browser's Origin header is one of `origins` (`scheme://host:*`: any port of that host, as
 * Serve's cors_origins); a request without one is no browser page's.
 */
function originAllowed(origin, origins) {
  if (origin === undefined || origins.includes(origin)) return true;
  const anyPort = origin.replace(/:\d+$/, ':*');
  return anyPort !== origin && origins.includes(anyPort);
}

/** The Origin names the backend itself (websocket clients such as Python's send that). */
function sameOrigin(origin, host) {
  try {
    return typeof host === 'string' && new URL(origin).host === host.toLowerCase();
  } catch {
    return false;
  }
}

/** Why a request's Host or Origin is refused, or null. */
function refusedOrigin(headers, { allowedHosts, corsOrigins }) {
  if (!hostAllowed(headers.host, allowedHosts)) {
    return `Host ${JSON.stringify(headers.host || '')} is not one of this backend's names (MARCELLE_BACKEND_ALLOWED_HOSTS)`;
  }
  if (!originAllowed(headers.origin, corsOrigins) && !sameOrigin(headers.origin, headers.host)) {
    return `Origin ${JSON.stringify(headers.origin)} is not allowed (MARCELLE_BACKEND_CORS_ORIGINS)`;
  }
  return null;
}

function sendError(res, error) {
  const body = JSON.stringify(error.toJSON());
  res.writeHead(error.code, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

/**
 * A request handler in front of the Express app: only `/<served name>` and
 * `/<served name>/<id>` go on. The raw (still encoded) first segment must be a served name
 * exactly, so no encoding, dot, slash or case variant of a name gets through.
 */
function restGuard(served, { trustedProxies, allowedHosts, corsOrigins }) {
  return (req, res, next) => {
    const refused = refusedOrigin(req.headers, { allowedHosts, corsOrigins });
    if (refused) {
      sendError(res, new Forbidden(refused));
      return;
    }
    const pathname = (req.url || '').split('?')[0];
    const segments = pathname.split('/');
    if (segments.length > 2 && segments[segments.length - 1] === '') segments.pop(); // trailing slash
    const [root, name, ...rest] = segments;
    if (root !== '' || !served.has(name) || rest.length > 1) {
      sendError(res, notServed(served));
      return;
    }
    // Service hooks read these through params (@feathersjs/express 4 lib/rest/index.js keeps
    // an existing req.feathers and adds provider/headers to it).
    req.feathers = {
      ...(req.feathers || {}),
      clientAddress: clientAddress(req.socket && req.socket.remoteAddress, req.headers, trustedProxies),
      setResponseHeader: (header, value) => {
        if (!res.headersSent) res.setHeader(header, value);
      },
    };
    next();
  };
}

/**
 * On each Socket.IO connection: only `find|get|create|update|patch|remove` events whose
 * first argument is a served name are dispatched; anything else (other names, legacy
 * `<path>::<method>` events) is answered with a NotFound through its acknowledgement, if
 * any, and dropped; a call whose arguments Feathers would refuse with a plain Error (a 500) is
 * answered BadRequest. Socket.IO 2 packet middleware (`socket.use`) sees the acknowledgement as
 * the packet's last element (socket.io 2.5 lib/socket.js onevent/dispatch).
 */
function socketGuard(io, served, { trustedProxies, allowedHosts, corsOrigins }) {
  // Before every handshake (polling and websocket): a websocket has no CORS, so this is what
  // keeps other sites' pages out.
  checkSocketHandshakes(io, (req) => refusedOrigin(req.headers, { allowedHosts, corsOrigins }) === null);
  io.use((socket, next) => {
    // @feathersjs/socketio 4 lib/middleware.js has set socket.feathers (the call params).
    if (socket.feathers) {
      socket.feathers.clientAddress = clientAddress(
        socket.handshake && socket.handshake.address,
        socket.handshake && socket.handshake.headers,
        trustedProxies,
      );
    }
    socket.use((packet, nextPacket) => {
      const [event, path] = packet;
      const ack = packet[packet.length - 1];
      const answer = (error) => {
        if (packet.length > 1 && typeof ack === 'function') ack(error.toJSON());
      };
      if (!(SOCKET_METHODS.has(event) && typeof path === 'string' && served.has(path))) {
        answer(notServed(served));
        return;
      }
      const args = packet.slice(2, typeof ack === 'function' ? -1 : undefined);
      const problem = socketArgumentsProblem(event, args);
      if (problem) answer(new BadRequest(`${path}.${event}: ${problem}`));
      else nextPacket();
    });
    next();
  });
}

const who = (user) => (user ? `${user.role || 'no-role'} ${user._id}` : 'anonymous');

/**
 * The access policy (application before-hook, run before every other hook): the edge checks
 * (validation.js) on every external call, then what policy.js says: a call that is not public
 * is authenticated (tokens of a logged-out account refused), methods no client calls are 405,
 * the shapes of what each role sends are checked (validation.js), then the caller's grant
 * decides (403, 404 for a record the caller may not read), and `own` grants add the owner to
 * the query. With authentication off every caller is `auth off`.
 */
function accessPolicy({ authEnabled, allowSignup, dataServices, abilityFor }) {
  const jwt = authenticate('jwt');
  const settings = { allowSignup };

  async function authenticateCaller(context) {
    // A login reads its account through here, already authenticated by its strategy, before
    // its token exists (@feathersjs/authentication 4.5 lib/core.js authenticate() sets
    // `authenticated`; no transport does).
    const duringLogin = context.params.authenticated === true;
    try {
      await jwt(context);
    } catch (error) {
      // A valid token whose account is gone: the JWT strategy's users.get answers NotFound.
      if (error.code === 404) throw new NotAuthenticated('The account of this token no longer exists');
      throw error;
    }
    const { user, authentication } = context.params;
    if (!user) throw new NotAuthenticated('Not authenticated');
    if (!duringLogin) checkTokenVersion(authentication && authentication.payload, user);
    // The package's CASL hooks read params.ability, which only Socket.IO connections carry
    // (set at login); it sets it for REST calls on data services only
    // (@marcellejs/backend 0.6.5 lib/utils/permission-hooks.js), not on `users`.
    if (!context.params.ability) context.params.ability = abilityFor(user);
    return user;
  }

  return async (context) => {
    if (!context.params.provider) return context; // calls made inside the backend
    checkShape(context);
    // REST calls to data services pass through the package's `:serviceName` service, whose
    // call then makes the data service's own: that one is decided.
    const service = policy.serviceOf(context.path, dataServices);
    if (service === null) return context;
    const { method, id } = context;
    const open = policy.isPublic(service, method, settings);
    const user = authEnabled && !open ? await authenticateCaller(context) : null;
    const problem = policy.methodProblem(service, method, id);
    if (problem) throw new MethodNotAllowed(problem);
    checkCall(context, user ? user.role : null);
    if (open) return context;
    const decision = policy.decide({
      role: authEnabled ? user.role : null,
      service,
      method,
      id,
      self: user ? user._id : undefined,
    });
    if (decision.refused === 404) throw new NotFound(decision.message);
    if (decision.refused) throw new Forbidden(decision.message);
    if (decision.query) context.params.query = { ...(context.params.query || {}), ...decision.query };
    return context;
  };
}

/**
 * Tokens carry their account's `tokenVersion` (claim `tv`); logout, a password change and a
 * reset from the environment raise it, so every earlier token stops working at once.
 */
function checkTokenVersion(payload, user) {
  const version = user.tokenVersion || 0;
  if (!payload || (payload.tv || 0) !== version) {
    throw new NotAuthenticated('This token is no longer valid (logged out or password changed): log in again');
  }
}

/** Application error-hook: one line per refused external call (the decision, not the rules). */
function logDenials(logger) {
  return (context) => {
    const { error, params } = context;
    // `:serviceName` is the package's on-demand service, which REST calls to data services
    // pass through (its Express route comes first); the data service's own call logs.
    if (params.provider && error && [401, 403, 405, 429].includes(error.code) && context.path !== ':serviceName') {
      const id = context.id !== undefined && context.id !== null ? ` ${context.id}` : '';
      logger.info(
        'denied %s %s%s for %s: %d %s',
        context.method,
        context.path,
        id,
        who(params.user),
        error.code,
        error.message,
      );
    }
    return context;
  };
}

/**
 * Login throttling, as hooks of the `authentication` service (REST and Socket.IO alike):
 * every password attempt (strategy `local`) costs a point of its client address's budget and
 * of the budget of that account *from that address*; a successful one, or one refused here,
 * gives them back. Past either: 429 with Retry-After (REST header, and `data.retryAfter` in
 * the error for Socket.IO clients). An account's budget is per address so that a stranger's
 * wrong passwords never lock out the right one sent from elsewhere; guessing is bounded per
 * address by both budgets and by the cost of bcrypt.
 */
function loginLimits({ perClient, perAccount }) {
  const clients = new RateLimiterMemory({
    keyPrefix: 'login-client',
    points: perClient.attempts,
    duration: perClient.seconds,
  });
  const accounts = new RateLimiterMemory({
    keyPrefix: 'login-account',
    points: perAccount.attempts,
    duration: perAccount.seconds,
  });

  const accountOf = (data) => (data && typeof data.email === 'string' ? data.email.trim().toLowerCase() : '');
  const isPasswordLogin = (context) => context.params.provider && context.data && context.data.strategy === 'local';

  async function before(context) {
    if (!isPasswordLogin(context)) return context;
    const client = context.params.clientAddress || 'unknown';
    const account = JSON.stringify([accountOf(context.data), client]);
    const results = await Promise.allSettled([clients.consume(client), accounts.consume(account)]);
    const refused = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
    if (refused.length > 0) {
      const unexpected = refused.find((r) => r instanceof Error);
      if (unexpected) throw unexpected;
      // A refused attempt checks no password: it costs nothing.
      await Promise.all([clients.reward(client, 1), accounts.reward(account, 1)]);
      const seconds = Math.max(1, Math.ceil(Math.max(...refused.map((r) => r.msBeforeNext)) / 1000));
      if (typeof context.params.setResponseHeader === 'function')
        context.params.setResponseHeader('Retry-After', String(seconds));
      throw new TooManyRequests(`Too many login attempts: try again in ${seconds} s`, { retryAfter: seconds });
    }
    context.params.loginCounted = { client, account };
    return context;
  }

  async function after(context) {
    const counted = context.params.loginCounted;
    if (counted) await Promise.all([clients.reward(counted.client, 1), accounts.reward(counted.account, 1)]);
    return context;
  }

  return { before, after };
}

module.exports = {
  checkServiceNames,
  servedNames: policy.servedNames,
  restGuard,
  socketGuard,
  accessPolicy,
  checkTokenVersion,
  originAllowed,
  logDenials,
  loginLimits,
};
