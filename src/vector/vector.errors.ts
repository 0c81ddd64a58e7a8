import { ConflictException, NotFoundException } from '@nestjs/common';

export const unknownNamespace = (namespace: string) =>
  new NotFoundException(`Namespace ${namespace} does not exist.`);

export const modelMismatch = (namespace: string, slotModel: string, providerModel: string) =>
  new ConflictException(
    `Namespace ${namespace} is indexed with model ${slotModel}, but the service embeds with ${providerModel}: rebuild the namespace first, or send embeddings with the items.`,
  );
