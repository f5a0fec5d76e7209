rule train_indicators:
    input:
        fp32=f"{RES}/pretrain/model.pt",
    output:
        indicators=update(f"{RES}/limpq/indicators.pt"),
        timing=update(timing_file("train_indicators")),
    params:
        **stage_params("train_indicators", launch=True),
        spec=indicators_spec(),
    log:
        f"{RES}/logs/train_indicators.log",
    threads: threads_of("train_indicators")
    priority: priority_of("train_indicators")
    resources:
        **resources_of("train_indicators"),
    cache: "omit-software"
    shell:
        "$MPQ_RUN_train_indicators --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --fp32 {input.fp32} --out {output.indicators} > {log} 2>&1"


rule extract_importance:
    input:
        indicators=f"{RES}/limpq/indicators.pt",
    output:
        pkl=f"{RES}/limpq/importance.pkl",
        meta=f"{RES}/limpq/importance.json",
        timing=timing_file("extract_importance"),
    params:
        **stage_params("extract_importance"),
        spec=extract_spec(),
    log:
        f"{RES}/logs/extract_importance.log",
    threads: threads_of("extract_importance")
    priority: priority_of("extract_importance")
    resources:
        **resources_of("extract_importance"),
    shell:
        "$MPQ_RUN_extract_importance --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --indicators {input.indicators} --out {output.pkl} --meta-out {output.meta} > {log} 2>&1"


rule train_supernet:
    input:
        fp32=f"{RES}/pretrain/model.pt",
    output:
        supernet=update(f"{RES}/rfquant/supernet.pt"),
        timing=update(timing_file("train_supernet")),
    params:
        **stage_params("train_supernet", launch=True),
        spec=supernet_spec(),
    log:
        f"{RES}/logs/train_supernet.log",
    threads: threads_of("train_supernet")
    priority: priority_of("train_supernet")
    resources:
        **resources_of("train_supernet"),
    cache: "omit-software"
    shell:
        "$MPQ_RUN_train_supernet --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --fp32 {input.fp32} --out {output.supernet} > {log} 2>&1"


rule ompq_importance:
    input:
        fp32=f"{RES}/pretrain/model.pt",
    output:
        pkl=f"{RES}/ompq/importance.pkl",
        timing=timing_file("ompq_importance"),
    params:
        **stage_params("ompq_importance"),
        spec=ompq_spec(),
    log:
        f"{RES}/logs/ompq_importance.log",
    threads: threads_of("ompq_importance")
    resources:
        **resources_of("ompq_importance"),
    shell:
        "$MPQ_RUN_ompq_importance --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --fp32 {input.fp32} --out {output.pkl} > {log} 2>&1"
