"""pluralign's Hydra configs. Composing them (`initialize_config_module("pluralign.conf")`, or
the `pluralign` app) needs the structured-config schemas registered; importing this package does
it, so a script or test that composes the configs needs no other import. `pluralign --help`
never imports it (it reads the YAML files directly), so it stays fast."""

from pluralign.config import register_configs

register_configs()
