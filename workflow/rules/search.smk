rule search:
    input:
        unpack(search_inputs),
    wildcard_constraints:
        policy=per_point_policies(),
    output:
        policy=f"{RES}/policies/{{policy}}/policy.yaml",
        timing=timing_file("search"),
    params:
        **stage_params("search"),
        spec=search_spec,
        importance=importance_arg,
    log:
        f"{RES}/logs/search/{{policy}}.log",
    threads: threads_of("search")
    resources:
        **resources_of("search"),
    shell:
        "$MPQ_RUN_search --spec {params.spec:q} --threads {threads} --timing-out {output.timing}"
        " {params.importance} --out {output.policy} > {log} 2>&1"
