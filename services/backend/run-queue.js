// The run queue's bookkeeping, done once, by the backend, with its own clock (workers only
// claim, run, report progress and finish):
// - every write of `heartbeatAt` (a worker's claim and its lease renewals) is stamped with the
//   backend's time, whatever the worker sent, so workers' clocks never matter;
// - a running run whose lease has expired (no renewal for its `leaseSeconds`, which the claiming
//   worker writes; `leaseSeconds` of the config when it wrote none) goes back to pending,
//   conditionally on the very heartbeat that was judged, so a renewal in between wins;
// - after the backend starts, no lease is judged before a lease's time has passed: every live
//   worker gets that long to reconnect and renew after an outage (its runs carry old stamps);
// - a run pending (since its last change) longer than `pendingSeconds` fails with a reason
//   (whether any connected worker serves its model: workers.js), so a page never waits forever.
//
// Changes go through the service (internal calls: the access rules judge clients only), so
// pages and workers get the `runs patched` events as for any change.
'use strict';

const BATCH = 500; // runs judged per check at most: a check never holds the event loop long

function isoNow(now) {
  return new Date(now()).toISOString();
}

/** runs before-patch hook: `heartbeatAt` is the backend's time (null stays null: a release). */
function stampHeartbeat(now = Date.now) {
  return (context) => {
    const data = context.data;
    if (context.params.provider && data && data.heartbeatAt !== undefined && data.heartbeatAt !== null) {
      context.data = { ...data, heartbeatAt: isoNow(now) };
    }
    return context;
  };
}

function startRunQueue(runs, { leaseSeconds, pendingSeconds, checkSeconds, servedModels, logger, now = Date.now }) {
  const startedAt = now();

  async function requeueExpired() {
    const running = await runs.find({
      query: { status: 'running', $select: ['_id', 'worker', 'heartbeatAt', 'leaseSeconds'], $limit: BATCH },
      paginate: false,
    });
    const t = now();
    for (const run of running) {
      const lease = (run.leaseSeconds || leaseSeconds) * 1000;
      const renewed = Date.parse(run.heartbeatAt);
      // No stamp (a claim never renewed) counts from the backend's start, like an old one.
      const last = Number.isNaN(renewed) ? startedAt : renewed;
      if (t - startedAt < lease || t - last <= lease) continue;
      try {
        await runs.patch(
          run._id,
          { status: 'pending', worker: null, heartbeatAt: null, leaseSeconds: null, progress: 0, partial: null },
          { query: { status: 'running', worker: run.worker, heartbeatAt: run.heartbeatAt } },
        );
        logger.warn(
          'run %s: worker %s stopped renewing its lease (%ss without renewal; backend up %ss); back to pending',
          run._id,
          run.worker,
          ((t - last) / 1000).toFixed(1),
          ((t - startedAt) / 1000).toFixed(1),
        );
      } catch (err) {
        if (err.code !== 404) throw err; // 404: it moved on meanwhile (renewed, finished, canceled)
      }
    }
  }

  async function failOverdue() {
    if (!pendingSeconds) return;
    const waiting = await runs.find({
      query: { status: 'pending', $sort: { updatedAt: 1 }, $select: ['_id', 'model', 'updatedAt'], $limit: BATCH },
      paginate: false,
    });
    const t = now();
    const served = servedModels();
    for (const run of waiting) {
      // updatedAt, not createdAt: a run just taken back from a dead worker starts waiting anew.
      if (t - new Date(run.updatedAt).getTime() <= pendingSeconds * 1000) break;
      const why = served.has(run.model)
        ? `no worker was free to take this run within ${pendingSeconds} s`
        : `no running worker serves model '${run.model}' (waited ${pendingSeconds} s for one)`;
      try {
        await runs.patch(run._id, { status: 'failed', error: why }, { query: { status: 'pending' } });
        logger.warn('run %s: %s', run._id, why);
      } catch (err) {
        if (err.code !== 404) throw err; // 404: claimed or canceled meanwhile
      }
    }
  }

  let stopped = false;
  let timer = null;
  const tick = () =>
    requeueExpired()
      .then(failOverdue)
      .catch((err) => logger.error('cannot check the run queue: %s', err.message))
      .finally(() => {
        if (!stopped) timer = setTimeout(tick, checkSeconds * 1000).unref();
      });
  timer = setTimeout(tick, checkSeconds * 1000).unref();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

module.exports = { startRunQueue, stampHeartbeat };
