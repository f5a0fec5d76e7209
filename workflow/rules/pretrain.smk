rule pretrain:
    output:
        model=update(f"{RES}/pretrain/model.pt"),
        metrics=update(f"{RES}/pretrain/metrics.json"),
        timing=update(timing_file("pretrain")),
    params:
        **stage_params("pretrain", launch=True),
        spec=pretrain_spec(),
    log:
        f"{RES}/logs/pretrain.log",
    threads: threads_of("pretrain")
    priority: priority_of("pretrain")
    resources:
        **resources_of("pretrain"),
    cache: "omit-software"
    shell:
        "$MPQ_RUN_pretrain --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --model-out {output.model} --metrics-out {output.metrics} > {log} 2>&1"
