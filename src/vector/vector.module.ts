import { Module } from '@nestjs/common';
import { IndexMaintenance } from './index-maintenance.service';
import { ImportController } from './import/import.controller';
import { ImportRepository } from './repositories/import.repository';
import { ImportService } from './import/import.service';
import { ItemReadsRepository } from './repositories/item-reads.repository';
import { ItemsController } from './items.controller';
import { ItemsService } from './items.service';
import { NdjsonBodyParser } from './import/ndjson-body';
import { RebuildService } from './rebuild.service';
import { StatisticsRepository } from './repositories/statistics.repository';
import { StatisticsService } from './statistics.service';
import { NamespaceRepository } from './repositories/namespace.repository';
import { VectorItemRepository } from './repositories/vector-item.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { SlotSizeRepository } from './repositories/slot-size.repository';
import { VectorController } from './vector.controller';
import { VectorService } from './vector.service';
import { VectorMetrics } from './vector.metrics';
import { VectorSettings } from './vector-settings';
import { VectorTables } from './vector-tables';

/** Namespaces, slots, upserts, rebuilds, cleanup, statistics and search. */
@Module({
  controllers: [VectorController, ItemsController, ImportController],
  providers: [
    VectorTables,
    VectorSettings,
    NamespaceRepository,
    VectorItemRepository,
    VectorSchemaRepository,
    VectorService,
    RebuildService,
    IndexMaintenance,
    ItemReadsRepository,
    ItemsService,
    StatisticsRepository,
    StatisticsService,
    ImportRepository,
    ImportService,
    NdjsonBodyParser,
    SlotSizeRepository,
    VectorMetrics,
  ],
})
export class VectorModule {}
