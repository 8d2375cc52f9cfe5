// capsule image ls: the guest images the server has (GET /v1/images).
import { Command } from 'commander';
import { withContext } from '../context.js';
import { shortTime } from '../output.js';
import type { Image, List } from '../types.js';

export function imageCommand(): Command {
  const image = new Command('image').description('Guest images registered on the server');
  image.command('ls').alias('list').description('List images')
    .action(withContext(async (ctx) => {
      const list = await ctx.client().get<List<Image>>('/v1/images');
      ctx.printer.table(list, list.items, [
        { header: 'NAME', value: (i) => i.name },
        { header: 'ROOTFS', value: (i) => (i.rootfs ? 'yes' : 'no') },
        { header: 'UPDATED', value: (i) => shortTime(i.updatedAt), optional: true },
        { header: 'DESCRIPTION', value: (i) => i.description },
      ]);
    }));
  return image;
}
