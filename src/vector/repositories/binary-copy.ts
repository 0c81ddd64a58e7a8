import { ItemRow } from '../vector.types';

/** Rows of an item table in PostgreSQL's binary COPY format. */
const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'binary');

export const COPY_COLUMNS =
  'slot_id, obj_ref, item_id, content, content_hash, metadata, embedding, embedding_source, model';

export function copyHeader(): Buffer {
  const header = Buffer.alloc(SIGNATURE.length + 8);
  SIGNATURE.copy(header, 0);
  // flags (no OIDs) and header extension length: both zero.
  return header;
}

export function copyTrailer(): Buffer {
  const trailer = Buffer.alloc(2);
  trailer.writeInt16BE(-1);
  return trailer;
}

/** One tuple: slot_id int8, texts, bytea, jsonb (version 1 + text), vector (dim, 0, float4s). */
export function encodeItem(slotId: number, row: ItemRow): Buffer {
  const fields: (Buffer | null)[] = [
    int8(slotId),
    text(row.obj_ref),
    row.item_id === null ? null : text(row.item_id),
    text(row.content),
    row.content_hash,
    row.metadata === null
      ? null
      : Buffer.concat([Buffer.from([1]), text(JSON.stringify(row.metadata))]),
    encodeVector(row.embedding),
    text(row.embedding_source),
    row.model === null ? null : text(row.model),
  ];
  const size = 2 + fields.reduce((sum, field) => sum + 4 + (field?.length ?? 0), 0);
  const tuple = Buffer.alloc(size);
  let offset = tuple.writeInt16BE(fields.length, 0);
  for (const field of fields) {
    offset = tuple.writeInt32BE(field === null ? -1 : field.length, offset);
    if (field) offset += field.copy(tuple, offset);
  }
  return tuple;
}

function int8(value: number): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigInt64BE(BigInt(value));
  return buffer;
}

function text(value: string): Buffer {
  return Buffer.from(value, 'utf8');
}

/**
 * A one-dimensional array of vectors in PostgreSQL's binary array form (ndim, has-nulls flag,
 * element type, length, lower bound, then each element with its length), for a `vector[]`
 * parameter. `vectorOid` is the OID of the vector type in the target database.
 */
export function encodeVectorArray(
  vectors: readonly (readonly number[])[],
  vectorOid: number,
): Buffer {
  const elements = vectors.map(encodeVector);
  const size = 20 + elements.reduce((sum, element) => sum + 4 + element.length, 0);
  const array = Buffer.alloc(size);
  let offset = array.writeInt32BE(1, 0); // dimensions
  offset = array.writeInt32BE(0, offset); // no NULL elements
  offset = array.writeUInt32BE(vectorOid, offset);
  offset = array.writeInt32BE(elements.length, offset);
  offset = array.writeInt32BE(1, offset); // lower bound
  for (const element of elements) {
    offset = array.writeInt32BE(element.length, offset);
    offset += element.copy(array, offset);
  }
  return array;
}

/**
 * pgvector's binary form: int16 dimensions, int16 unused, then float4 values, big-endian. Also
 * a query parameter: pg sends Buffers in binary, sparing both sides a float ↔ text conversion.
 */
export function encodeVector(values: readonly number[]): Buffer {
  const buffer = Buffer.alloc(4 + 4 * values.length);
  buffer.writeInt16BE(values.length, 0);
  buffer.writeInt16BE(0, 2);
  values.forEach((value, i) => buffer.writeFloatBE(value, 4 + 4 * i));
  return buffer;
}
