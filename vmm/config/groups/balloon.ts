// -balloon deflate-on-oom=true|false  (virtio-balloon, one per VM); JSON "balloon": {"deflate_on_oom"}.
import { ConfigError, KeyTable, onOff } from '../options.js';
import { defineGroup } from '../group.js';

export const BALLOON_KEYS = new KeyTable({
  deflateOnOom: onOff({ cli: 'deflate-on-oom', json: 'deflate_on_oom', metavar: 'true|false' }),
});

export const balloonGroup = defineGroup({
  options: [{ name: '-balloon', syntax: BALLOON_KEYS.syntax(), help: 'virtio-balloon (one per VM); deflate-on-oom gives pages back when the guest runs out', takes: 'value' }],
  json: { balloon: BALLOON_KEYS.jsonObject() },
  fromCli(option, value, s) {
    if (s.balloon) throw new ConfigError(`${option.name}: only one balloon device per VM`);
    s.balloon = { deflateOnOom: BALLOON_KEYS.parseKv(option.name, value ?? '').deflateOnOom ?? false };
  },
  fromJson(j, s) {
    if (j.balloon) s.balloon = { deflateOnOom: BALLOON_KEYS.fromJson(j.balloon).deflateOnOom ?? false };
  },
});
