// What one user may queue (a before-create hook of `runs`, after validation): at most
// `runsPerMinute` new runs a minute (429 + Retry-After), and at most `pendingInputBytes` of run
// inputs waiting for a worker (429 + Retry-After while earlier runs wait; 413 for one input
// larger than the whole budget). The user is the account with authentication on, the whole
// backend with it off (the local demo has one user). Each run stores its input's size
// (`inputBytes`, set by runs-hooks.js) so the budget is one query over the user's pending runs.
// What one user may keep in a dataset's instances service (`instanceQuota`, a before-create
// hook): at most `perOwner` instances (403, as a Kubernetes ResourceQuota refuses: remove some
// first), counted the same way.
'use strict';

const { RateLimiterMemory } = require('rate-limiter-flexible');
const { FeathersError, Forbidden, TooManyRequests } = require('@feathersjs/errors');

// What a client should wait before trying again once its pending inputs fill the budget.
const PENDING_RETRY_SECONDS = 5;

function payloadTooLarge(message) {
  // @feathersjs/errors 4 has no class for 413: its base class, as its own classes use it.
  return new FeathersError(message, 'PayloadTooLarge', 413, 'payload-too-large');
}

function tooMany(context, message, seconds) {
  if (typeof context.params.setResponseHeader === 'function') {
    context.params.setResponseHeader('Retry-After', String(seconds));
  }
  return new TooManyRequests(message, { retryAfter: seconds });
}

function runQuotas({ runsPerMinute, pendingInputBytes }, runs) {
  const rate = new RateLimiterMemory({ keyPrefix: 'runs-created', points: runsPerMinute, duration: 60 });
  // Bytes of creates that have passed this hook and are not stored yet, per user.
  const inFlight = new Map();

  async function before(context) {
    if (!context.params.provider) return context;
    const user = context.params.user;
    const owner = user ? String(user._id) : 'everyone';
    const bytes = context.data.inputBytes;
    if (bytes > pendingInputBytes) {
      throw payloadTooLarge(`run.input is ${bytes} bytes: over this user's budget of ${pendingInputBytes} bytes`);
    }
    try {
      await rate.consume(owner);
    } catch (refused) {
      if (refused instanceof Error) throw refused;
      const seconds = Math.max(1, Math.ceil(refused.msBeforeNext / 1000));
      throw tooMany(context, `Too many runs: at most ${runsPerMinute} a minute; try again in ${seconds} s`, seconds);
    }
    const query = { status: 'pending', $select: ['inputBytes'], ...(user ? { userId: owner } : {}) };
    const pending = await runs._find({ query, paginate: false });
    const waiting = pending.reduce((sum, run) => sum + (run.inputBytes || 0), 0) + (inFlight.get(owner) || 0);
    if (waiting + bytes > pendingInputBytes) {
      await rate.reward(owner, 1);
      throw tooMany(
        context,
        `Too much waiting: this user's pending runs hold ${waiting} bytes of input (at most ${pendingInputBytes}); wait for them to finish`,
        PENDING_RETRY_SECONDS,
      );
    }
    inFlight.set(owner, (inFlight.get(owner) || 0) + bytes);
    context.params.quotaHeld = { owner, bytes };
    return context;
  }

  // After create (stored: the query counts it now) or its error (never stored).
  function release(context) {
    const held = context.params.quotaHeld;
    if (held) {
      delete context.params.quotaHeld;
      const left = (inFlight.get(held.owner) || 0) - held.bytes;
      if (left > 0) inFlight.set(held.owner, left);
      else inFlight.delete(held.owner);
    }
    return context;
  }

  return { before, release };
}

function instanceQuota({ perOwner }, service, name) {
  // Creates that have passed this hook and are not stored yet, per user.
  const inFlight = new Map();

  async function before(context) {
    if (!context.params.provider) return context;
    const user = context.params.user;
    const owner = user ? String(user._id) : 'everyone';
    const held = inFlight.get(owner) || 0;
    inFlight.set(owner, held + 1);
    context.params.instanceHeld = owner;
    const query = { $limit: 0, ...(user ? { userId: owner } : {}) };
    const { total } = await service._find({ query, paginate: { default: 1, max: 1 } });
    if (total + held >= perOwner) {
      throw new Forbidden(
        `${name}: ${user ? 'this user has' : 'there are'} ${total} instances, at most ${perOwner}: remove some before adding more`,
      );
    }
    return context;
  }

  // After create (stored: the count has it now) or its error (never stored).
  function release(context) {
    const owner = context.params.instanceHeld;
    if (owner !== undefined) {
      delete context.params.instanceHeld;
      const left = (inFlight.get(owner) || 0) - 1;
      if (left > 0) inFlight.set(owner, left);
      else inFlight.delete(owner);
    }
    return context;
  }

  return { before, release };
}

module.exports = { runQuotas, instanceQuota, payloadTooLarge };
