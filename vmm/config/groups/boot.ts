// -kernel, -append, -initrd; JSON "boot-source".
import { KeyTable, path, text } from '../options.js';
import { settingsGroup } from '../group.js';

export const DEFAULT_CMDLINE = 'console=ttyS0 reboot=k panic=-1';

export const BOOT_KEYS = new KeyTable({
  kernel: path({ cli: '-kernel', json: 'kernel_image_path', metavar: 'FILE' }),
  cmdline: text({ cli: '-append', json: 'boot_args', metavar: 'CMDLINE', expect: 'a kernel command line', valid: () => true }),
  initrd: path({ cli: '-initrd', json: 'initrd_fs_path', metavar: 'FILE' }),
});

export const bootGroup = settingsGroup({
  table: BOOT_KEYS,
  options: {
    kernel: 'bzImage (required)',
    cmdline: `kernel command line (default "${DEFAULT_CMDLINE}")`,
    initrd: 'initial ramdisk',
  },
  section: 'boot-source',
});
