rule evaluate:
    input:
        model=f"{RES}/policies/{{policy}}/model.pt",
    wildcard_constraints:
        policy=per_point_policies(),
    output:
        metrics=f"{RES}/policies/{{policy}}/metrics.json",
        timing=timing_file("evaluate"),
    params:
        **stage_params("evaluate"),
        spec=evaluate_spec,
    log:
        f"{RES}/logs/evaluate/{{policy}}.log",
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    shell:
        "$MPQ_RUN_evaluate --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " --model {input.model} --out {output.metrics} > {log} 2>&1"


rule plot_policy:
    input:
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
    wildcard_constraints:
        policy=per_point_policies(),
    output:
        png=report(f"{RES}/policies/{{policy}}/bits.png", caption="../report/bits.rst", category="Policies",
                   subcategory="{policy}"),
        svg=f"{RES}/policies/{{policy}}/bits.svg",
    params:
        **stage_params("plot_policy"),
    log:
        f"{RES}/logs/plot_policy/{{policy}}.log",
    threads: threads_of("plot_policy")
    resources:
        **resources_of("plot_policy"),
    shell:
        "$MPQ_RUN_plot_policy --policy {input.policy} --png {output.png} --svg {output.svg} > {log} 2>&1"


rule summarize:
    input:
        fp32=f"{RES}/pretrain/metrics.json",
        metrics=policy_metrics(),
        timings=timing_files(),
    output:
        csv=report(f"{RES}/summary.csv", caption="../report/summary.rst", category="Summary"),
        bitops_png=report(f"{RES}/figures/top1_vs_bitops.png", caption="../report/front.rst", category="Summary"),
        size_png=report(f"{RES}/figures/top1_vs_size.png", caption="../report/front.rst", category="Summary"),
        bitops_svg=f"{RES}/figures/top1_vs_bitops.svg",
        size_svg=f"{RES}/figures/top1_vs_size.svg",
    params:
        **stage_params("summarize"),
        experiment=config["experiment"],
    log:
        f"{RES}/logs/summarize.log",
    threads: threads_of("summarize")
    resources:
        **resources_of("summarize"),
    shell:
        "$MPQ_RUN_summarize --fp32-metrics {input.fp32} --metrics {input.metrics} --benchmarks {input.timings}"
        " --experiment {params.experiment} --out {output.csv} --bitops-figure {output.bitops_png} {output.bitops_svg}"
        " --size-figure {output.size_png} {output.size_svg} > {log} 2>&1"
