# Entry point. The workflow lives in workflow/; this file only adds the default target, because
# Snakemake takes the first rule of the top-level Snakefile as the default after an include.
include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        final_targets(),
