//! The schema of a job's free-form `metadata`: any JSON, except that no string or key may hold a
//! NUL character (PostgreSQL cannot store one, so the API refuses it with 400 `invalid_body`).

use std::borrow::Cow;
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A string without NUL characters, as a regular expression.
pub const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

fn text() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL_PATTERN))
}

/// A value inside `metadata` (recursive: arrays and objects of such values).
pub struct MetadataValue;

impl PartialSchema for MetadataValue {
    fn schema() -> RefOr<Schema> {
        let me = Ref::from_schema_name("MetadataValue");
        AnyOfBuilder::new()
            .item(text())
            .item(ObjectBuilder::new().schema_type(SchemaType::from_iter([
                Type::Number,
                Type::Boolean,
                Type::Null,
            ])))
            .item(ArrayBuilder::new().items(me.clone()))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property_names(Some(text()))
                    .additional_properties(Some(AdditionalProperties::RefOr(RefOr::Ref(me)))),
            )
            .description(Some(
                "Any JSON value whose strings and keys hold no NUL character.",
            ))
            .into()
    }
}

impl ToSchema for MetadataValue {
    fn name() -> Cow<'static, str> {
        "MetadataValue".into()
    }
}

/// `metadata` of a job request: an object of [`MetadataValue`]s, or `null`.
pub fn request_metadata() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(text()))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::Ref(
            Ref::from_schema_name("MetadataValue"),
        ))))
        .description(Some(
            "Free-form JSON object (at most 16 KiB, no NUL characters), returned with the job.",
        ))
        .into()
}
