def test_the_plain_http_context_refuses_every_certificate() -> None:
    import ssl

    from higgs.common.tls import MINIMUM_TLS, unverifiable_context

    ctx = unverifiable_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.get_ca_certs() == []
    assert ctx.minimum_version == MINIMUM_TLS
