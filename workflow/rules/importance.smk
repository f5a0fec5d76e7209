rule train_indicators:
    input:
        script=stage("train_indicators"),
        fp32=f"{RES}/pretrain/model.pt",
    output:
        f"{RES}/limpq/indicators.pt",
    params:
        spec=indicators_spec(),
    log:
        f"{RES}/logs/train_indicators.log",
    threads: res("train_indicators", "threads")
    resources:
        gpu=res("train_indicators", "gpu"),
        mem_mb=res("train_indicators", "mem_mb"),
        runtime=res("train_indicators", "runtime"),
    cache: "omit-software"
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --fp32 {input.fp32} --out {output} > {log} 2>&1"


rule extract_importance:
    input:
        script=stage("extract_importance"),
        indicators=f"{RES}/limpq/indicators.pt",
    output:
        pkl=f"{RES}/limpq/importance.pkl",
        meta=f"{RES}/limpq/importance.json",
    params:
        spec=extract_spec(),
    log:
        f"{RES}/logs/extract_importance.log",
    threads: res("extract_importance", "threads")
    resources:
        mem_mb=res("extract_importance", "mem_mb"),
        runtime=res("extract_importance", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --indicators {input.indicators} --out {output.pkl} --meta-out {output.meta} > {log} 2>&1"
