import { describe, expect, it } from 'vitest';
import { fsError, nativeCause } from './fs-errors.js';

describe('fsError and nativeCause', () => {
  it('a native copy failure reads as a node:fs one: the errno name, and the description in lower case', () => {
    const cause = nativeCause({ errno: 28, message: 'write at 4096: No space left on device', syscall: 'write', offset: 4096 });
    expect(cause).toEqual({ code: 'ENOSPC', what: 'write at 4096', description: 'no space left on device', syscall: 'write', offset: 4096 });
    expect(nativeCause({ errno: 5, message: 'Input/output error', syscall: 'read', offset: 0 })?.description).toBe('input/output error');
    const fromNode = Object.assign(new Error("ENOSPC: no space left on device, write 'out.img'"), { code: 'ENOSPC', syscall: 'write' });
    expect(fsError('out.img', 'write at 4096', fromNode).message).toBe('out.img: write at 4096 failed: no space left on device (ENOSPC)');
  });

  it('an answer without an errno is not a native failure', () => {
    expect(nativeCause(new Error('x'))).toBeUndefined();
  });
});
