"""Operations kit: reference services for tests and demos, benchmarks, deploy files."""
