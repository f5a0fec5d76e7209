rule evaluate:
    input:
        script=stage("evaluate"),
        model=f"{RES}/policies/{{policy}}/model.pt",
    output:
        f"{RES}/policies/{{policy}}/metrics.json",
    params:
        spec=evaluate_spec,
    benchmark:
        f"{RES}/benchmarks/evaluate/{{policy}}.tsv"
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


rule plot_policy:
    input:
        script=stage("plot_policy"),
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
    output:
        png=report(f"{RES}/policies/{{policy}}/bits.png", caption="../report/bits.rst", category="Policies",
                   subcategory="{policy}"),
        svg=f"{RES}/policies/{{policy}}/bits.svg",
    log:
        f"{RES}/logs/plot_policy/{{policy}}.log",
    threads: res("plot_policy", "threads")
    resources:
        mem_mb=res("plot_policy", "mem_mb"),
        runtime=res("plot_policy", "runtime"),
    shell:
        "{PY} {input.script} --policy {input.policy} --out-stem {RES}/policies/{wildcards.policy}/bits > {log} 2>&1"


rule summarize:
    input:
        script=stage("summarize"),
        fp32=f"{RES}/pretrain/metrics.json",
        metrics=policy_metrics(),
    output:
        csv=report(f"{RES}/summary.csv", caption="../report/summary.rst", category="Summary"),
        bitops_png=report(f"{RES}/figures/top1_vs_bitops.png", caption="../report/front.rst", category="Summary"),
        size_png=report(f"{RES}/figures/top1_vs_size.png", caption="../report/front.rst", category="Summary"),
        bitops_svg=f"{RES}/figures/top1_vs_bitops.svg",
        size_svg=f"{RES}/figures/top1_vs_size.svg",
    params:
        benchmarks=f"{RES}/benchmarks",
        experiment=config["experiment"],
    log:
        f"{RES}/logs/summarize.log",
    threads: res("summarize", "threads")
    resources:
        mem_mb=res("summarize", "mem_mb"),
        runtime=res("summarize", "runtime"),
    shell:
        "{PY} {input.script} --fp32-metrics {input.fp32} --metrics {input.metrics}"
        " --benchmarks $(find {params.benchmarks} -name '*.tsv' 2>/dev/null | sort)"
        " --experiment {params.experiment} --out {output.csv} --figures {RES}/figures > {log} 2>&1"
