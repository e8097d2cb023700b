// Removes finished runs (succeeded, failed, canceled) once they are older than the configured
// age, so a long-running backend does not keep every run ever made: NeDB holds all of its
// documents in memory, MongoDB keeps them on disk. Pending and running runs are never removed.
//
// Removed through the service (an internal call, no provider: the access rules, which judge
// clients, do not apply), so watching pages get a `runs removed` event like any removal.
'use strict';

const { FINISHED } = require('./runs-hooks');

const BATCH = 500; // runs removed per sweep at most: a sweep never holds the event loop long

/** Sweeps every tenth of the age (at least 1 s, at most a minute) for as long as the process runs. */
function startRunRetention(runs, { keepSeconds, logger }) {
  async function sweep() {
    const cutoff = new Date(Date.now() - keepSeconds * 1000);
    const old = await runs.find({
      query: { status: { $in: FINISHED }, updatedAt: { $lt: cutoff }, $select: ['_id'], $limit: BATCH },
      paginate: false,
    });
    let removed = 0;
    for (const run of old) {
      try {
        await runs.remove(run._id);
        removed += 1;
      } catch (err) {
        if (err.code !== 404) throw err; // 404: removed meanwhile (by its owner, the admin)
      }
    }
    if (removed > 0) logger.info('removed %d finished runs older than %ds', removed, keepSeconds);
  }

  const every = Math.min(60, Math.max(1, keepSeconds / 10)) * 1000;
  const tick = () =>
    sweep()
      .catch((err) => logger.error('cannot remove old runs: %s', err.message))
      .finally(() => setTimeout(tick, every).unref());
  setTimeout(tick, every).unref();
}

module.exports = { startRunRetention };
