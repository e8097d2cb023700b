import { describe, expect, it } from 'vitest';
import { runLine, runsHistory } from '../src/index.js';
import { FakeRunClient } from './fakes.js';

describe('runsHistory', () => {
  it('lists the runs, newest first, with status, progress and result', async () => {
    const client = new FakeRunClient();
    const history = runsHistory(client, { describe: (run) => `${run.model}!` });
    const target = document.createElement('div');
    history.mount(target);
    expect(target.textContent).toContain('No runs yet.');
    await client.create('gen', {}, {});
    client.patch('r1', { status: 'running', progress: 0.5 });
    await client.create('gen', {}, {});
    client.patch('r2', { status: 'succeeded', result: { label: 7 } });
    const items = [...target.querySelectorAll('[data-testid="runs-history-item"]')];
    expect(items.map((i) => i.dataset.id)).toEqual(['r2', 'r1']);
    expect(items.map((i) => i.dataset.status)).toEqual(['succeeded', 'running']);
    expect(items[0].textContent).toMatch(/gen!: done → 7$/);
    expect(items[1].textContent).toMatch(/gen!: running 50%$/);
  });

  it('takes a backendRunModel too', () => {
    expect(() => runsHistory({})).toThrow(/backendRunModel/);
    expect(runLine({ model: 'm', status: 'failed' })).toBe('m: failed');
  });
});
