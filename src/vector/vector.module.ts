import { Module } from '@nestjs/common';
import { IndexMaintenance } from './index-maintenance.service';
import { ItemsController } from './items.controller';
import { ItemsService } from './items.service';
import { RebuildService } from './rebuild.service';
import { ItemReadsRepository } from './repositories/item-reads.repository';
import { StatisticsRepository } from './repositories/statistics.repository';
import { StatisticsService } from './statistics.service';
import { NamespaceRepository } from './repositories/namespace.repository';
import { VectorItemRepository } from './repositories/vector-item.repository';
import { VectorSchemaRepository } from './repositories/vector-schema.repository';
import { VectorController } from './vector.controller';
import { VectorService } from './vector.service';
import { VectorSettings } from './vector-settings';
import { VectorTables } from './vector-tables';

/** Namespaces, slots, upserts, rebuilds, cleanup, statistics and search. */
@Module({
  controllers: [VectorController, ItemsController],
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
  ],
})
export class VectorModule {}
