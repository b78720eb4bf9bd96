/**
 * Access-log files → lines, streamed: a file is never held in memory whole, whatever its size.
 * gzip is recognised by its magic bytes (RFC 1952 §2.3.1: 1f 8b), not by the file name, so a
 * rotated `access.log.1` that logrotate compressed without renaming reads as well as `.gz`.
 */
import { constants } from 'node:fs';
import { access, open } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';

/** A file that could not be read; the message names the file. */
export class LogFileError extends Error {
  override readonly name = 'LogFileError';
  constructor(
    readonly file: string,
    cause: unknown,
  ) {
    super(`cannot read ${file}: ${describe(cause)}`, { cause });
  }
}

/** Fails fast, before any file is read, when one of them is missing or unreadable. */
export async function checkReadable(files: readonly string[]): Promise<void> {
  for (const file of files) {
    try {
      await access(file, constants.R_OK);
    } catch (err) {
      throw new LogFileError(file, err);
    }
  }
}

/**
 * Every line of one file, plain or gzip (also several gzip members one after another, as
 * `cat a.gz b.gz` makes). Throws LogFileError on any read or decompression error.
 */
export async function* readLines(file: string): AsyncGenerator<string> {
  let input: Readable;
  try {
    input = await openDecoded(file);
  } catch (err) {
    throw new LogFileError(file, err);
  }
  try {
    for await (const line of createInterface({ input, crlfDelay: Infinity })) yield line;
  } catch (err) {
    throw new LogFileError(file, err);
  } finally {
    input.destroy();
  }
}

/** The file's content as a stream, gunzipped when it starts with the gzip magic. */
async function openDecoded(file: string): Promise<Readable> {
  const fh = await open(file, 'r');
  let gzip: boolean;
  try {
    const magic = Buffer.alloc(2);
    const { bytesRead } = await fh.read(magic, 0, 2, 0);
    gzip = bytesRead === 2 && magic[0] === 0x1f && magic[1] === 0x8b;
  } catch (err) {
    await fh.close();
    throw err;
  }
  const raw = fh.createReadStream({ start: 0 }); // closes the handle when it ends or is destroyed
  if (!gzip) return raw;
  // pipeline, not pipe: a read error must reach the gunzip stream, or readline would wait forever.
  return pipeline(raw, createGunzip(), () => {});
}

function describe(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  switch (code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'is a directory';
    case 'Z_DATA_ERROR':
    case 'Z_BUF_ERROR':
      return `corrupt gzip data (${err instanceof Error ? err.message : String(err)})`;
    default:
      return err instanceof Error ? err.message : String(err);
  }
}
