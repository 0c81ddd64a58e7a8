import { Readable } from 'node:stream';
import { LineTooLongError, numberedLines } from '../../src/vector/import/ndjson-body';

const collect = async (chunks: Buffer[], maxLineChars = 1_000) => {
  const out: [number, string][] = [];
  for await (const { line, text } of numberedLines(Readable.from(chunks), maxLineChars)) {
    out.push([line, text]);
  }
  return out;
};

describe('numberedLines', () => {
  it('numbers lines across chunk boundaries, \\r\\n included, the last one without a newline', async () => {
    const text = Buffer.from('{"a":1}\r\n\n{"b":"é€"}\n{"c":3}');
    // Split inside the two-byte é and the three-byte €: the decoder must keep them whole.
    const cuts = [3, 9, 10, 16, 18, text.length];
    const chunks = cuts.map((end, i) => text.subarray(i === 0 ? 0 : cuts[i - 1], end));
    expect(await collect(chunks)).toEqual([
      [1, '{"a":1}'],
      [2, ''],
      [3, '{"b":"é€"}'],
      [4, '{"c":3}'],
    ]);
  });

  it('refuses a line longer than the limit, naming it, even before its newline arrives', async () => {
    await expect(collect([Buffer.from('ok\n' + 'x'.repeat(50))], 20)).rejects.toEqual(
      new LineTooLongError(2, 20),
    );
    await expect(collect([Buffer.from('ok\n' + 'x'.repeat(50) + '\nok\n')], 20)).rejects.toEqual(
      new LineTooLongError(2, 20),
    );
  });

  it('leaves the stream open when the caller stops early, so the rest can be drained', async () => {
    const stream = Readable.from([Buffer.from('1\n2\n'), Buffer.from('3\n')]);
    for await (const { line } of numberedLines(stream, 100)) if (line === 1) break;
    expect(stream.destroyed).toBe(false);
  });
});
