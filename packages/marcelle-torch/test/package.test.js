// The package as a user installs it: its exports map, its declarations and its entry agree.
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as entry from '../src/index.js';
import { modelPicker } from '../src/index.js';

const root = dirname(import.meta.dirname);
const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8'));

describe('the npm package', () => {
  it('is ESM with an exports map whose files exist, and Marcelle as a peer', () => {
    expect(pkg.type).toBe('module');
    for (const target of Object.values(pkg.exports)) {
      for (const file of typeof target === 'string' ? [target] : Object.values(target)) {
        expect(existsSync(`${root}/${file}`), file).toBe(true);
      }
    }
    expect(Object.keys(pkg.peerDependencies)).toContain('@marcellejs/core');
    expect(pkg.dependencies ?? {}).not.toHaveProperty('@marcellejs/core');
  });

  it('declares every value the entry exports, and exports every value it declares', () => {
    const declared = new Set();
    for (const file of ['types/index.d.ts', 'types/image-tensor.d.ts']) {
      const text = readFileSync(`${root}/${file}`, 'utf8');
      for (const [, name] of text.matchAll(/export declare (?:class|function|const) (\w+)/g)) declared.add(name);
    }
    expect([...declared].sort()).toEqual(Object.keys(entry).sort());
  });

  it('has nothing digit-specific in its code (the examples may use the built-in models)', () => {
    for (const file of ['backend-run-model.js', 'runs-history.js', 'run-client.js']) {
      const code = readFileSync(`${root}/src/${file}`, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      expect(code).not.toMatch(/digit/);
    }
  });

  it('modelPicker keeps its value while offered, else takes the preferred one', () => {
    const picker = modelPicker({ testid: 'p' });
    picker.setChoices([{ value: 'a' }, { value: 'b' }], 'b');
    expect(picker.$value.get()).toBe('b');
    picker.setChoices([{ value: 'a' }, { value: 'b' }, { value: 'c' }], 'c');
    expect(picker.$value.get()).toBe('b');
  });
});
