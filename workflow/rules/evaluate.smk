rule evaluate:
    input:
        script=stage("evaluate"),
        model=f"{RES}/policies/{{policy}}/model.pt",
    output:
        f"{RES}/policies/{{policy}}/metrics.json",
    params:
        spec=evaluate_spec,
    log:
        f"{RES}/logs/evaluate/{{policy}}.log",
    threads: res("evaluate", "threads")
    resources:
        gpu=res("evaluate", "gpu"),
        mem_mb=res("evaluate", "mem_mb"),
        runtime=res("evaluate", "runtime"),
    shell:
        "{PY} {input.script} --spec {params.spec:q} --threads {threads}"
        " --model {input.model} --out {output} > {log} 2>&1"


rule summarize:
    input:
        script=stage("summarize"),
        fp32=f"{RES}/pretrain/metrics.json",
        metrics=policy_metrics(),
    output:
        report(f"{RES}/summary.csv", caption="../report/summary.rst", category="Summary"),
    log:
        f"{RES}/logs/summarize.log",
    threads: res("summarize", "threads")
    resources:
        mem_mb=res("summarize", "mem_mb"),
        runtime=res("summarize", "runtime"),
    shell:
        "{PY} {input.script} --fp32-metrics {input.fp32} --metrics {input.metrics}"
        " --out {output} > {log} 2>&1"
