// Every place this backend changes the installed @marcellejs/backend 0.6.5 (or the Feathers 4,
// Express 4 and engine.io 3 it is built on) instead of using their public API: each names the
// upstream file and version it works around, checks what it relies on, and stops the start
// (exit 2: "the backend package changed: ...") when the installed package no longer looks so.
// tests/reliability/test_backend_package.py starts the backend with each of those assumptions
// broken and checks the start stops; each patch's effect is checked through the running backend
// by the test named with it.
//
// Where this backend uses the package and its libraries through their own extension points
// (no patch): Feathers hooks, services and `app.setup(server)` (start.js), a service's own
// publisher on feathers-casl's channels (runs-hooks.js), `req.feathers` and Socket.IO
// middleware (access.js), the authentication service's `getPayload` and the local strategy's
// `findEntity` (accounts.js), socket.io 2.5's `namespace.connected` (workers.js).
'use strict';

const cors = require('cors');
const feathersExpress = require('@feathersjs/express');
const { BadRequest } = require('@feathersjs/errors');

class PackageChanged extends Error {}

function expect(condition, what) {
  if (!condition) throw new PackageChanged(`the backend package changed: ${what}`);
}

/**
 * @marcellejs/backend 0.6.5 lib/authentication/abilities.js: its `defineRulesFor` logs the whole
 * permissions object (`console.log('permissions', ...)`) each time it computes a caller's rules
 * (every REST call with a token, every login). Its `defineAbilitiesFor` reads
 * `exports.defineRulesFor` at call time, so this replacement is used everywhere: the same
 * rules (the role's list from `permissions`, which start.js derives from policy.js, with
 * "${user.…}" placeholders filled in; none for an unknown role, or for an account not yet
 * stored, whose `_id` is unknown), without the log.
 * Test: test_backend_package.py::test_the_package_applies_the_policys_rules (the rules a login
 * answers are the policy's) and test_backend_auth.py::test_the_log_says_what_was_decided_not_the_rules.
 */
function rulesWithoutLog(abilities) {
  expect(
    typeof abilities.defineRulesFor === 'function' && typeof abilities.defineAbilitiesFor === 'function',
    'lib/authentication/abilities.js no longer exports defineRulesFor and defineAbilitiesFor',
  );
  const UNDEFINED = Symbol('undefined placeholder');
  const fill = (value, user) => {
    if (Array.isArray(value)) return value.map((v) => fill(v, user));
    if (value && typeof value === 'object') {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fill(v, user)]));
    }
    const match = typeof value === 'string' && /^\$\{user\.([A-Za-z_][A-Za-z0-9_]*)\}$/.exec(value);
    if (!match) return value;
    if (user[match[1]] === undefined) throw UNDEFINED;
    return user[match[1]];
  };
  abilities.defineRulesFor = (user, app) => {
    const permissions = app.get('permissions') || {};
    const rules = Object.prototype.hasOwnProperty.call(permissions, user.role) ? permissions[user.role] : [];
    try {
      return fill(rules, user);
    } catch (error) {
      if (error === UNDEFINED) return [];
      throw error;
    }
  };
}

/**
 * @marcellejs/backend 0.6.5 lib/app.js: its body parsers (express.json() and
 * express.urlencoded(), 100 kB by default) hand their errors (bad JSON, too large) to Feathers'
 * error handler, which answers GeneralError 500. Replaced in place with parsers of `limit`
 * bytes whose errors are the client's: BadRequest 400 or PayloadTooLarge 413.
 * Test: test_bad_runs.py::test_malformed_rest_bodies_are_refused_with_a_4xx.
 */
function clientErrorsFromBodyParsers(expressApp, { limit, payloadTooLarge }) {
  const parsers = {
    jsonParser: feathersExpress.json({ limit }),
    urlencodedParser: feathersExpress.urlencoded({ extended: true, limit }),
  };
  const replaced = expressApp._router.stack.filter((layer) => layer.name in parsers);
  expect(replaced.length === 2, 'lib/app.js no longer has its json and urlencoded body parsers');
  for (const layer of replaced) {
    const parse = parsers[layer.name];
    layer.handle = (req, res, next) =>
      parse(req, res, (err) => {
        if (!err) return next();
        const tooLarge = err.type === 'entity.too.large';
        const error = tooLarge
          ? payloadTooLarge(`the request body is over ${limit} bytes`)
          : new BadRequest(
              `the request body is not valid ${layer.name === 'jsonParser' ? 'JSON' : 'form data'}: ${err.message}`,
            );
        const answer = () => res.status(error.code).json(error.toJSON());
        if (!tooLarge || req.complete) return answer();
        // Refused on its Content-Length, unread: read the rest (up to a bound) before answering,
        // or the client, still sending, sees the connection reset instead of the 413.
        let unread = 4 * limit;
        req.on('data', (chunk) => {
          unread -= chunk.length;
          if (unread < 0) req.destroy();
        });
        req.on('end', answer);
        req.resume();
      });
  }
}

/**
 * @marcellejs/backend 0.6.5 lib/app.js: `app.use(cors())` answers every origin
 * (Access-Control-Allow-Origin: *), so any website could read and write the local demo's runs.
 * Replaced in place: only the origins `allowed` accepts get CORS answers.
 * Test: test_backend_edge.py::test_10_other_websites_cannot_drive_the_local_demo.
 */
function corsForAllowedOrigins(expressApp, allowed) {
  const layers = expressApp._router.stack.filter((layer) => layer.name === 'corsMiddleware');
  expect(layers.length === 1, 'lib/app.js no longer has its cors middleware');
  layers[0].handle = cors({ origin: (origin, done) => done(null, allowed(origin)) });
}

/**
 * @marcellejs/backend 0.6.5 lib/app.js registers, when it loads, the on-demand `/:serviceName`
 * route (lib/services/generic/dynamic.service.js) and its 404 handler; Express tries routes in
 * order, so a service added later is never reached over REST. The REST routes of `service`
 * (added here) are moved ahead of them.
 * Test: test_runs_backend.py::test_served_models_lists_what_the_connected_workers_announce.
 */
function serveAheadOfDynamicServices(expressApp, name, service) {
  expressApp.use(name, service);
  const stack = expressApp._router.stack;
  const routeOf = (layer) => (layer.route ? layer.route.path : '');
  const dynamic = stack.findIndex((layer) => routeOf(layer) === '/:serviceName');
  const mine = stack.filter((layer) => routeOf(layer).startsWith(`/${name}`));
  expect(dynamic >= 0 && mine.length > 0, 'lib/app.js no longer routes its services through /:serviceName');
  for (const layer of mine) stack.splice(stack.indexOf(layer), 1);
  stack.splice(dynamic, 0, ...mine);
}

/**
 * @marcellejs/backend 0.6.5 lib/app.js configures Socket.IO without options, so engine.io 3.6
 * (lib/server.js) accepts messages of 1 MB at most (maxHttpBufferSize), less than a run. Its
 * polling transport reads the limit for each request; its websocket server reads it when it is
 * made (init()): set it, then make that server again.
 * Test: test_bad_runs.py::test_an_oversized_input_over_socketio_is_refused_with_an_error.
 */
function socketMessageLimit(io, bytes) {
  const eio = io && io.eio;
  expect(
    eio && typeof eio.maxHttpBufferSize === 'number' && typeof eio.init === 'function',
    'engine.io no longer keeps maxHttpBufferSize and init() on its server (engine.io 3.6 lib/server.js)',
  );
  eio.maxHttpBufferSize = bytes;
  eio.init();
}

/**
 * @marcellejs/backend 0.6.5 lib/app.js configures Socket.IO without options, so engine.io has no
 * `allowRequest` check of its handshakes. engine.io 3.6 (lib/server.js verify()) reads
 * `this.allowRequest` before every handshake, polling and websocket: set on the server made.
 * Test: test_backend_edge.py::test_10_other_websites_cannot_drive_the_local_demo.
 */
function checkSocketHandshakes(io, allowed) {
  const eio = io && io.eio;
  expect(
    eio && typeof eio.verify === 'function' && 'allowRequest' in eio,
    'engine.io no longer has allowRequest on its server (engine.io 3.6 lib/server.js)',
  );
  eio.allowRequest = (req, done) => done(null, allowed(req));
}

/**
 * @marcellejs/backend 0.6.5 lib/app.hooks.js: its app before-hooks turn query values into
 * objects (MongoDB ObjectIds, Dates), which the edge checks (validation.js) would refuse as not
 * plain JSON; and no hook of the package may see a call before it is checked. Feathers 4 adds
 * app hooks after those already there, so `hook` is put first in each method's list, where
 * @feathersjs/commons 4.5 lib/hooks.js keeps them (app.__hooks.before[method], run in order).
 * Test: test_backend_package.py::test_the_access_hook_runs_before_the_packages_hooks.
 */
function firstAppHook(app, hook) {
  for (const method of ['find', 'get', 'create', 'update', 'patch', 'remove']) {
    const hooks = app.__hooks && app.__hooks.before && app.__hooks.before[method];
    expect(Array.isArray(hooks), `Feathers no longer keeps the app's ${method} hooks in app.__hooks.before`);
    hooks.unshift(hook);
  }
}

/**
 * @marcellejs/backend 0.6.5 lib/services/users/users.service.js makes the users service without
 * `$and` in its adapter's whitelist, and its CASL hook on users.find (feathers-casl, adapter
 * `feathers-mongodb`) turns a rule with conditions (an editor's own account) into an `$and`
 * query, which the adapter then refuses: @feathersjs/adapter-commons 4.5 (lib/service.js) keeps
 * the operators it allows in options.whitelist and reads them on each call.
 * Test: test_access_matrix.py::test_the_access_table[socketio] (`users` find: own).
 */
function usersQueriesWithAnd(users) {
  const whitelist = users && users.options && users.options.whitelist;
  expect(Array.isArray(whitelist), "the users service's adapter keeps no options.whitelist");
  users.options.whitelist = [...new Set([...whitelist, '$and'])];
}

/**
 * @marcellejs/backend 0.6.5 lib/services/generic/dynamic.service.js makes a data service on its
 * first call (`getService(name)`); this backend makes them at start, so that their hooks are in
 * place before any request.
 * Test: every test of `runs` (its hooks are added to the service made here).
 */
function makeDataServices(app, names) {
  let dynamic = null;
  try {
    dynamic = app.service(':serviceName');
  } catch {
    // Feathers 4 throws for a path no service is registered at.
  }
  expect(dynamic && typeof dynamic.getService === 'function', 'the :serviceName service has no getService(name)');
  for (const name of names) dynamic.getService(name);
}

module.exports = {
  PackageChanged,
  rulesWithoutLog,
  clientErrorsFromBodyParsers,
  corsForAllowedOrigins,
  serveAheadOfDynamicServices,
  socketMessageLimit,
  checkSocketHandshakes,
  firstAppHook,
  usersQueriesWithAnd,
  makeDataServices,
};
