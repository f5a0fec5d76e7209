# A retraining-free RFQuant front (policies with `front_job`, the default for a `greedy` sweep with
# `finetune: none`) is one job: one rule per front, since its outputs are the files of every point
# (what its search, subnet, evaluate and plot_policy jobs would write).
for _front in FRONT_JOBS:

    rule:
        name:
            front_rule_name(_front)
        input:
            supernet=f"{RES}/rfquant/supernet.pt",
        output:
            policies=front_files(_front, "policies"),
            models=front_files(_front, "models"),
            charts=front_files(_front, "charts"),
            metrics=front_files(_front, "metrics"),
            search_times=front_files(_front, "search_times"),
            model_times=front_files(_front, "model_times"),
            evaluate_times=front_files(_front, "evaluate_times"),
        params:
            **stage_params("rfquant_front"),
            spec=front_spec(_front),
        log:
            f"{RES}/logs/rfquant_front/{_front}.log",
        threads: threads_of("rfquant_front")
        priority: priority_of("rfquant_front")
        resources:
            **resources_of("rfquant_front"),
        shell:
            "$MPQ_RUN_rfquant_front --spec {params.spec:q} --threads {threads} --supernet {input.supernet}"
            " --policies {output.policies} --models {output.models} --charts {output.charts} --metrics {output.metrics}"
            " --search-times {output.search_times} --model-times {output.model_times}"
            " --evaluate-times {output.evaluate_times} > {log} 2>&1"
