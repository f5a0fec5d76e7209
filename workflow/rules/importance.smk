rule train_indicators:
    input:
        script=stage("train_indicators"),
        fp32=f"{RES}/pretrain/model.pt",
    output:
        update(f"{RES}/limpq/indicators.pt"),
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
        "{LAUNCH[train_indicators]} {input.script} --spec {params.spec:q} --threads {threads}"
        " --timing-out {RES}/benchmarks/train_indicators.tsv --fp32 {input.fp32} --out {output} > {log} 2>&1"


rule extract_importance:
    input:
        script=stage("extract_importance"),
        indicators=f"{RES}/limpq/indicators.pt",
    output:
        pkl=f"{RES}/limpq/importance.pkl",
        meta=f"{RES}/limpq/importance.json",
    params:
        spec=extract_spec(),
    benchmark:
        f"{RES}/benchmarks/extract_importance.tsv"
    log:
        f"{RES}/logs/extract_importance.log",
    threads: res("extract_importance", "threads")
    resources:
        mem_mb=res("extract_importance", "mem_mb"),
        runtime=res("extract_importance", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --indicators {input.indicators} --out {output.pkl} --meta-out {output.meta} > {log} 2>&1"


rule train_supernet:
    input:
        script=stage("train_supernet"),
        fp32=f"{RES}/pretrain/model.pt",
    output:
        update(f"{RES}/rfquant/supernet.pt"),
    params:
        spec=supernet_spec(),
    log:
        f"{RES}/logs/train_supernet.log",
    threads: res("train_supernet", "threads")
    resources:
        gpu=res("train_supernet", "gpu"),
        mem_mb=res("train_supernet", "mem_mb"),
        runtime=res("train_supernet", "runtime"),
    cache: "omit-software"
    shell:
        "{LAUNCH[train_supernet]} {input.script} --spec {params.spec:q} --threads {threads}"
        " --timing-out {RES}/benchmarks/train_supernet.tsv --fp32 {input.fp32} --out {output} > {log} 2>&1"


rule ompq_importance:
    input:
        script=stage("ompq_importance"),
        fp32=f"{RES}/pretrain/model.pt",
    output:
        f"{RES}/ompq/importance.pkl",
    params:
        spec=ompq_spec(),
    benchmark:
        f"{RES}/benchmarks/ompq_importance.tsv"
    log:
        f"{RES}/logs/ompq_importance.log",
    threads: res("ompq_importance", "threads")
    resources:
        gpu=res("ompq_importance", "gpu"),
        mem_mb=res("ompq_importance", "mem_mb"),
        runtime=res("ompq_importance", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --fp32 {input.fp32} --out {output} > {log} 2>&1"
