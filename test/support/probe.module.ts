import { Body, Controller, HttpCode, Module, Post } from '@nestjs/common';
import { Type } from 'class-transformer';
import { ArrayMaxSize, IsInt, IsString, Length, Max, Min, ValidateNested } from 'class-validator';

class ProbeItemDto {
  @IsString()
  @Length(1, 16)
  obj_ref!: string;
}

class ProbeDto {
  @IsString()
  @Length(1, 32)
  name!: string;

  @IsInt()
  @Min(1)
  @Max(10)
  count!: number;

  @ValidateNested({ each: true })
  @ArrayMaxSize(5)
  @Type(() => ProbeItemDto)
  items: ProbeItemDto[] = [];
}

/** A validated POST route for tests of the app's global pipe, filter and body limit. */
@Controller('test-probe')
class ProbeController {
  @Post()
  @HttpCode(200)
  echo(@Body() body: ProbeDto): { received: ProbeDto; is_instance: boolean } {
    return { received: body, is_instance: body instanceof ProbeDto };
  }
}

@Module({ controllers: [ProbeController] })
export class ProbeModule {}
