/**
 * OVF XML errors are one line: text taken from a damaged descriptor never
 * carries its line breaks into the message (found by the hostile-input
 * campaign, tools/hostile, seed 4 case 822).
 */
import { ImageError } from '@img/block';
import { describe, expect, it } from 'vitest';
import { parseOvf } from './ovf.js';

function errorOf(xml: string): ImageError {
  try {
    parseOvf(xml, 'vm.ovf');
  } catch (e) {
    if (ImageError.isInstance(e)) return e;
    throw e;
  }
  throw new Error('parsed');
}

describe('malformed OVF XML', () => {
  it('an end tag that lost its ">" is a malformed end tag, in one line', () => {
    const e = errorOf('<?xml version="1.0"?>\n<Envelope>\n  <VirtualSystem>\n    <A></A\u001e\n  </VirtualSystem>\n</Envelope>\n');
    expect(e.code).toBe('ERR_IMG_CORRUPT');
    expect(e.message).toMatch(/^ova: vm\.ovf: the OVF is not well-formed XML: a malformed end tag at character \d+$/);
    expect(e.message).not.toMatch(/\n/);
  });

  it('an end tag naming another element still says which', () => {
    expect(errorOf('<Envelope><A></B></Envelope>').message).toMatch(/the end tag <\/B> does not match <A>/);
  });
});
