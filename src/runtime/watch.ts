/**
 * Watches the files a running gateway was built from (config, policy, certificate and key, CA
 * files, the `file` directory) and calls back once, debounced, when any of them changes. It
 * watches the folders, not the files: editors and `cp` replace a file by renaming a new one over
 * it, and a watch on the old file would go blind.
 */
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

const DEBOUNCE_MS = 300;

export interface FileWatch {
  /** Watches a new set of files instead (after a reload). */
  reset(files: readonly string[]): void;
  close(): void;
}

export function watchFiles(files: readonly string[], onChange: (file: string) => void): FileWatch {
  let watchers: FSWatcher[] = [];
  let timer: NodeJS.Timeout | undefined;
  let changed = '';
  const arm = (list: readonly string[]) => {
    const byDir = new Map<string, Set<string>>();
    for (const f of list) {
      const names = byDir.get(dirname(f)) ?? new Set<string>();
      names.add(basename(f));
      byDir.set(dirname(f), names);
    }
    for (const [dir, names] of byDir) {
      try {
        const w = watch(dir, { persistent: false }, (_event, name) => {
          if (name === null || !names.has(name.toString())) return;
          changed = `${dir}/${name.toString()}`;
          clearTimeout(timer);
          timer = setTimeout(() => onChange(changed), DEBOUNCE_MS);
        });
        w.on('error', () => {});
        watchers.push(w);
      } catch {
        // a folder that does not exist (yet): nothing to watch there
      }
    }
  };
  const close = () => {
    clearTimeout(timer);
    for (const w of watchers) w.close();
    watchers = [];
  };
  arm(files);
  return {
    reset: (list) => {
      close();
      arm(list);
    },
    close,
  };
}
