rule pretrain:
    input:
        script=stage("pretrain"),
    output:
        model=update(f"{RES}/pretrain/model.pt"),
        metrics=update(f"{RES}/pretrain/metrics.json"),
    params:
        spec=pretrain_spec(),
    log:
        f"{RES}/logs/pretrain.log",
    threads: res("pretrain", "threads")
    resources:
        gpu=res("pretrain", "gpu"),
        mem_mb=res("pretrain", "mem_mb"),
        runtime=res("pretrain", "runtime"),
    cache: "omit-software"
    shell:
        "{LAUNCH[pretrain]} {input.script} --spec {params.spec:q} --threads {threads}"
        " --timing-out {RES}/benchmarks/pretrain.tsv --model-out {output.model} --metrics-out {output.metrics}"
        " > {log} 2>&1"
