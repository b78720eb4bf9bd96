// onClose: the stages' 'close' callbacks share one listener per response, and behave like res.once.
import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { onClose } from '../../src/pipeline/on-close.js';

const response = () => new ServerResponse(new IncomingMessage(new Socket()));

describe('onClose', () => {
  it('runs every callback once, in the order registered, on one listener', () => {
    const res = response();
    const ran: number[] = [];
    for (let i = 0; i < 5; i++) onClose(res, () => ran.push(i));
    expect(res.listenerCount('close')).toBe(1);
    res.emit('close');
    res.emit('close');
    expect(ran).toEqual([0, 1, 2, 3, 4]);
    expect(res.listenerCount('close')).toBe(0);
  });

  it('never runs a callback registered after the close, as res.once would not', () => {
    const res = response();
    const ran: string[] = [];
    onClose(res, () => ran.push('before'));
    res.emit('close');
    onClose(res, () => ran.push('after'));
    expect(ran).toEqual(['before']);
  });

  it('keeps responses apart', () => {
    const [a, b] = [response(), response()];
    const ran: string[] = [];
    onClose(a, () => ran.push('a'));
    onClose(b, () => ran.push('b'));
    b.emit('close');
    expect(ran).toEqual(['b']);
  });
});
