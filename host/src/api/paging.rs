//! Query strings and page sizes, shared by the paged routes.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use super::error::ApiError;
use crate::error_code::ErrorCode;

/// Largest page of a paged route.
pub const MAX_PAGE: u32 = 1000;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;

/// The parsed query, or a 400 `invalid_query` saying what is wrong with it.
pub fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidQuery, e.body_text()))
}

/// `limit`, defaulted, or a 400 when it is outside 1 to [`MAX_PAGE`].
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ))
    }
}
